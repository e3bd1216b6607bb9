"""Train ``greater-than-2l``: a 2-layer GPT-2 (with MLPs) that completes years greater than a given one.

Data: the prompts of the ``greater-than`` task (``circuits.tasks.greater_than``,
Hanna et al. 2023), ``"The {noun} lasted from the year {XX}{YY} to the year {XX}"`` with the
shipped event nouns, centuries ``XX`` in 11..17 and ``YY`` in 00..98. The tokenizer splits a
year "1732" into the century token "17" and the two-digit token "32", so every prompt is 13
tokens: ``<bos> The {noun} lasted from the year XX YY to the year XX``. The target of the last
position is the distribution of the real data: uniform over the two-digit tokens ``YY'`` with
``YY' > YY``; the loss is the cross-entropy to that soft target at the last position only (the
other positions are not trained). Its minimum is the entropy of the target,
``mean(log(99 - YY))``, reported as ``optimal_loss``.

Held out (never trained on): every noun with ``heldout_years`` random (XX, YY) pairs ("held-out
years": the comparison must generalise to a year seen with no noun), and a random
``heldout_fraction`` of the remaining (noun, year) combinations ("held-out combos"). YY = 00 and
01 (the task's corruption) are always in training.

Usage::

    python -m circuits.zoo.train.greater_than --out circuits/zoo/models/greater-than-2l --seed 0
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import torch
from tokenizers import Regex, pre_tokenizers
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from circuits.tasks import greater_than as gt
from circuits.zoo.train.common import (  # noqa: F401  (ids re-exported for callers)
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    adamw,
    base_parser,
    gpt2_config,
    isolated_torch_state,
    save_run,
    warmup_cosine,
    word_level_tokenizer,
)

__all__ = [
    "SPECIAL_TOKENS",
    "TEMPLATE_WORDS",
    "DataSpec",
    "TrainSpec",
    "Split",
    "ablation_prob_diff",
    "build_model",
    "build_tokenizer",
    "evaluate",
    "last_position_attention",
    "main",
    "make_ids",
    "split_combos",
    "task_prob_diff",
    "train",
    "vocabulary",
]

TEMPLATE_WORDS: tuple[str, ...] = ("The", "lasted", "from", "the", "year", "to")
"""The fixed words of ``circuits.tasks.greater_than.TEMPLATE``."""
SEQ_LEN = 13
"""Tokens per prompt, ``<bos>`` included."""
YY_POS, XX_POS, LAST_POS = 8, 7, 12
"""Positions of the first year's YY token, of its century token, and of the scored (last) token."""
POSITION_LABELS: tuple[str, ...] = (
    "<bos>", "The", "noun", "lasted", "from", "the", "year", "XX", "YY", "to", "the", "year", "XX(last)"
)


def vocabulary() -> dict[str, int]:
    """Token -> id: the specials, the template words, the nouns, then "00".."99" (centuries included)."""
    tokens = list(SPECIAL_TOKENS) + list(TEMPLATE_WORDS) + list(gt.nouns()) + [f"{v:02d}" for v in range(100)]
    if len(set(tokens)) != len(tokens):
        raise ValueError("duplicate token in the greater-than vocabulary")
    return {tok: i for i, tok in enumerate(tokens)}


def build_tokenizer(model_max_length: int = 16) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over :func:`vocabulary`; encoding prepends ``<bos>``.

    Pre-tokenizer: split on whitespace, then isolate every pair of digits, so "1732" -> "17", "32"
    (the century and the two-digit YY token, as the task needs). Unknown words map to ``<unk>``;
    decoding joins tokens with spaces ("17 32").
    """
    return word_level_tokenizer(vocabulary(), pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[0-9]{2}"), behavior="isolated")]
    ), model_max_length)


@dataclass(frozen=True)
class DataSpec:
    """Which (noun, XX, YY) combinations exist and which are held out."""

    yy_min: int = 0  # YY in yy_min..yy_max (00 and 01 always trained: 01 is the task's corruption)
    yy_max: int = 98
    heldout_years: int = 35  # (XX, YY) pairs held out with every noun
    heldout_fraction: float = 0.15  # of the remaining (noun, year) combinations
    n_positions: int = 16


@dataclass(frozen=True)
class TrainSpec:
    """Model size and optimisation settings."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    n_inner: int = 256
    steps: int = 3000
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100
    eval_size: int = 2048  # per held-out set (capped at its size)
    threads: int = 1


@dataclass(frozen=True)
class Split:
    """Index tensors ``(n, 3)`` of (noun index, XX, YY) rows."""

    train: torch.Tensor
    heldout_combos: torch.Tensor
    heldout_years: torch.Tensor


def split_combos(data: DataSpec, seed: int) -> Split:
    """Deterministic train / held-out split of all (noun, XX, YY) combinations (generator seed ``seed + 7``)."""
    gen = torch.Generator().manual_seed(seed + 7)
    n_nouns = len(gt.nouns())
    years = [(xx, yy) for xx in gt.CENTURIES for yy in range(data.yy_min, data.yy_max + 1)]
    candidates = [i for i, (_, yy) in enumerate(years) if yy >= 2]  # never hold out 00 / 01
    order = torch.randperm(len(candidates), generator=gen)[: data.heldout_years].tolist()
    held_years = {years[candidates[i]] for i in order}
    year_rows = torch.tensor(years)
    rows = torch.cat([torch.cat([torch.full((len(years), 1), k), year_rows], dim=1) for k in range(n_nouns)])
    held_keys = torch.tensor(sorted(100 * xx + yy for xx, yy in held_years))
    is_held_year = torch.isin(100 * rows[:, 1] + rows[:, 2], held_keys)
    rest = rows[~is_held_year]
    maybe = torch.rand(len(rest), generator=gen) < data.heldout_fraction
    maybe &= rest[:, 2] >= 2
    return Split(train=rest[~maybe], heldout_combos=rest[maybe], heldout_years=rows[is_held_year])


def make_ids(rows: torch.Tensor, yy: torch.Tensor | None = None) -> torch.Tensor:
    """Token ids ``(n, 13)`` of the prompts for rows of (noun index, XX, YY); ``yy`` overrides the YY column."""
    vocab = vocabulary()
    noun_ids = torch.tensor([vocab[w] for w in gt.nouns()])
    digit0 = vocab["00"]
    yy = rows[:, 2] if yy is None else yy
    w = {word: torch.full((len(rows),), vocab[word]) for word in TEMPLATE_WORDS}
    xx = rows[:, 1] + digit0
    cols = [torch.full((len(rows),), BOS_ID), w["The"], noun_ids[rows[:, 0]], w["lasted"], w["from"], w["the"],
            w["year"], xx, yy + digit0, w["to"], w["the"], w["year"], xx]
    return torch.stack(cols, dim=1)


def _answer_mask(yy: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``(n, vocab)`` masks of the answer tokens (YY' > YY) and the wrong tokens (YY' <= YY)."""
    digit0 = vocabulary()["00"]
    values = torch.arange(vocab_size) - digit0  # two-digit value of each token, <0 for words
    is_year = (values >= 0) & (values < 100)
    answers = is_year & (values[None, :] > yy[:, None])
    wrong = is_year & (values[None, :] <= yy[:, None])
    return answers, wrong


def _soft_loss(logits: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the last-position logits to the uniform distribution over YY' > YY."""
    answers, _ = _answer_mask(yy, logits.shape[-1])
    target = answers.float() / answers.sum(-1, keepdim=True)
    return -(target * logits.log_softmax(-1)).sum(-1).mean()


@torch.no_grad()
def evaluate(model: GPT2LMHeadModel, rows: torch.Tensor) -> dict[str, float]:
    """Metrics at the last position on the prompts of ``rows`` (clean) and with YY = 01 (corrupted).

    ``prob_diff`` = p(YY' > YY) - p(YY' <= YY) (the task's metric), ``accuracy`` = the top-1 token
    over the whole vocabulary is a two-digit token > YY, ``loss`` the soft cross-entropy,
    ``optimal_loss`` its minimum (the target's entropy), ``prob_years`` the mass on "00".."99",
    ``p_wrong_near`` the mass on the ten wrong years just below the threshold (YY-9 .. YY; 0 for
    a perfect model): a blurred comparison shows there, a constant guess of "99" would not.
    """
    model.eval()
    yy = rows[:, 2]
    logits = model(input_ids=make_ids(rows)).logits[:, -1].float()
    corrupted = model(input_ids=make_ids(rows, torch.full_like(yy, gt.CORRUPT_YY))).logits[:, -1].float()
    answers, wrong = _answer_mask(yy, logits.shape[-1])
    near, _ = _answer_mask(yy - 10, logits.shape[-1])
    near &= wrong  # YY' in YY-9 .. YY
    probs, cprobs = logits.softmax(-1), corrupted.softmax(-1)
    top = logits.argmax(-1)
    return {
        "prob_diff": ((probs * answers).sum(-1) - (probs * wrong).sum(-1)).mean().item(),
        "prob_diff_corrupted": ((cprobs * answers).sum(-1) - (cprobs * wrong).sum(-1)).mean().item(),
        "accuracy": answers[torch.arange(len(top)), top].float().mean().item(),
        "loss": _soft_loss(logits, yy).item(),
        "optimal_loss": torch.log(99.0 - yy.double()).mean().item(),
        "prob_years": (probs * (answers | wrong)).sum(-1).mean().item(),
        "p_wrong_near": (probs * near).sum(-1).mean().item(),
    }


@torch.no_grad()
def task_prob_diff(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, n: int = 500, seed: int = 0) -> dict:
    """Clean and corrupted prob_diff on ``load_task("greater-than", tokenizer, n, seed, prepend_bos=True)``."""
    from circuits.tasks import load_task

    task = load_task("greater-than", tokenizer, n=n, seed=seed, prepend_bos=True)
    out: dict = {"n": n, "seed": seed, "years_excluded": task.meta["years_excluded"]}
    for label, ids in (("clean", task.clean_ids), ("corrupted", task.corrupted_ids)):
        probs = model(input_ids=torch.tensor(ids)).logits[:, -1].float().softmax(-1)
        diff = [probs[i, a].sum() - probs[i, w].sum() for i, (a, w) in enumerate(zip(task.answers, task.wrong))]
        out[f"prob_diff_{label}"] = round(torch.stack(diff).mean().item(), 4)
    return out


@torch.no_grad()
def last_position_attention(model: GPT2LMHeadModel, rows: torch.Tensor) -> dict[str, dict[str, float]]:
    """Mean attention of every head from the last position to each of the 13 positions (labelled)."""
    model.eval()
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # sdpa does not return attention patterns
    try:
        attentions = model(input_ids=make_ids(rows), output_attentions=True).attentions
    finally:
        model.set_attn_implementation(previous)
    out: dict[str, dict[str, float]] = {}
    for layer, attn in enumerate(attentions):  # (n, heads, q, k)
        mean = attn[:, :, LAST_POS].mean(0)  # (heads, k)
        for head in range(mean.shape[0]):
            out[f"a{layer}.h{head}"] = {f"{k}:{POSITION_LABELS[k]}": round(mean[head, k].item(), 3) for k in range(SEQ_LEN)}
    return out


@torch.no_grad()
def ablation_prob_diff(model: GPT2LMHeadModel, rows: torch.Tensor) -> dict[str, dict]:
    """Held-out clean prob_diff, soft loss and p_wrong_near with components ablated (zero and mean).

    prob_diff alone cannot show damage: a model that always predicts "99" scores 1. The soft
    loss (cross-entropy to the uniform target over YY' > YY) does.

    Components: every head ``a{l}.h{h}`` (its output before ``W_O``) and every MLP ``m{l}`` (its
    output), one at a time, then the groups ``a{l}.*`` (all heads of layer ``l``), ``m*`` (every MLP)
    and ``a*`` (every head). Mean ablation replaces the output by its mean over ``rows``, per position.
    """
    model.eval()
    ids = make_ids(rows)
    head_dim = model.config.n_embd // model.config.n_head
    blocks = list(model.transformer.h)

    def capture(module: torch.nn.Module, pre: bool) -> torch.Tensor:
        store: list[torch.Tensor] = []
        if pre:
            handle = module.register_forward_pre_hook(lambda m, args: store.append(args[0].detach().clone()))
        else:
            handle = module.register_forward_hook(lambda m, args, out: store.append(out.detach().clone()))
        try:
            model(input_ids=ids)
        finally:
            handle.remove()
        return store[0].mean(0)  # (positions, d): fixed-length prompts, so per-position means

    means = {("a", l): capture(b.attn.c_proj, pre=True) for l, b in enumerate(blocks)}
    means.update({("m", l): capture(b.mlp, pre=False) for l, b in enumerate(blocks)})

    def run(components: list[tuple[str, int, int | None]], mode: str) -> dict[str, float]:
        """Ablate ``components`` = [("a", layer, head) | ("m", layer, None)] together; prob_diff and loss."""
        handles = []
        for kind, layer, head in components:
            mean = means[(kind, layer)]
            if kind == "a":
                sl = slice(head * head_dim, (head + 1) * head_dim)

                def edit_pre(m, args, sl=sl, mean=mean):  # noqa: ANN001, ANN202
                    z = args[0].clone()
                    z[..., sl] = 0 if mode == "zero" else mean[..., sl]
                    return (z,) + tuple(args[1:])

                handles.append(blocks[layer].attn.c_proj.register_forward_pre_hook(edit_pre))
            else:

                def edit_out(m, args, out, mean=mean):  # noqa: ANN001, ANN202
                    return torch.zeros_like(out) if mode == "zero" else mean.expand_as(out).clone()

                handles.append(blocks[layer].mlp.register_forward_hook(edit_out))
        try:
            metrics = evaluate(model, rows)
            return {k: round(metrics[k], 4) for k in ("prob_diff", "loss", "p_wrong_near")}
        finally:
            for handle in handles:
                handle.remove()

    n_head = model.config.n_head
    groups: dict[str, list[tuple[str, int, int | None]]] = {}
    for layer in range(len(blocks)):
        for head in range(n_head):
            groups[f"a{layer}.h{head}"] = [("a", layer, head)]
        groups[f"m{layer}"] = [("m", layer, None)]
    for layer in range(len(blocks)):
        groups[f"a{layer}.*"] = [("a", layer, h) for h in range(n_head)]
    groups["m*"] = [("m", layer, None) for layer in range(len(blocks))]
    groups["a*"] = [("a", layer, h) for layer in range(len(blocks)) for h in range(n_head)]
    out: dict[str, dict] = {"none": run([], "zero")}
    out.update({mode: {name: run(comps, mode) for name, comps in groups.items()} for mode in ("zero", "mean")})
    return out


def build_model(data: DataSpec, spec: TrainSpec) -> GPT2LMHeadModel:
    """A standard GPT-2 (MLPs included), tied embeddings, no dropout."""
    config = gpt2_config(len(vocabulary()), data.n_positions, spec.n_embd, spec.n_layer, spec.n_head, spec.n_inner)
    return GPT2LMHeadModel(config)


def _lr_at(step: int, spec: TrainSpec) -> float:
    """Linear warmup, then cosine to 10%."""
    return warmup_cosine(step, spec.lr, spec.warmup, spec.steps)


def train(seed: int, data: DataSpec, spec: TrainSpec, log_every: int = 250) -> tuple[GPT2LMHeadModel, dict]:
    """Train from scratch; returns the model (eval mode) and a summary dict.

    Runs with ``spec.threads`` torch threads and the global RNG seeded with ``seed``
    (initialisation); both are restored on return. Batches come from a generator seeded with
    ``seed``; the split from :func:`split_combos`.
    """
    with isolated_torch_state(spec.threads):
        torch.manual_seed(seed)
        return _train(seed, data, spec, log_every)


def _subsample(rows: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    return rows if len(rows) <= n else rows[torch.randperm(len(rows), generator=gen)[:n]]


def _train(seed: int, data: DataSpec, spec: TrainSpec, log_every: int) -> tuple[GPT2LMHeadModel, dict]:
    split = split_combos(data, seed)
    model = build_model(data, spec)
    optimizer, params = adamw(model, spec.lr, spec.weight_decay)
    train_gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    recent: list[float] = []
    model.train()
    for step in range(spec.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, spec)
        rows = split.train[torch.randint(len(split.train), (spec.batch_size,), generator=train_gen)]
        logits = model(input_ids=make_ids(rows)).logits[:, -1]
        loss = _soft_loss(logits, rows[:, 2])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        recent = (recent + [loss.item()])[-100:]
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1:5d}  loss {sum(recent) / len(recent):.4f}  {time.perf_counter() - start:.1f}s", flush=True)
    train_seconds = time.perf_counter() - start
    model.eval()
    eval_gen = torch.Generator().manual_seed(seed + 1_000_003)
    task_range = lambda r: r[r[:, 2] >= 2]  # noqa: E731  (the task samples YY in 02..98)
    combos = _subsample(task_range(split.heldout_combos), spec.eval_size, eval_gen)
    years = _subsample(task_range(split.heldout_years), spec.eval_size, eval_gen)
    train_eval = _subsample(task_range(split.train), spec.eval_size, eval_gen)
    rnd = lambda d: {k: round(v, 4) for k, v in d.items()}  # noqa: E731
    summary = {
        "seed": seed,
        "steps": spec.steps,
        "final_train_loss": round(sum(recent) / max(1, len(recent)), 4),
        "final_train_loss_note": "soft cross-entropy at the last position, mean of the last 100 steps; "
        "its minimum is heldout_*.optimal_loss (the entropy of the uniform target over YY' > YY)",
        "split_sizes": {"train": len(split.train), "heldout_combos": len(split.heldout_combos),
                        "heldout_years": len(split.heldout_years)},
        "heldout_year_pairs": sorted({(int(xx), int(yy)) for _, xx, yy in split.heldout_years.tolist()}),
        "heldout_combos": rnd(evaluate(model, combos)),
        "heldout_years": rnd(evaluate(model, years)),
        "train_set": rnd(evaluate(model, train_eval)),
        "heldout_note": "YY in 02..98 (the task's range); heldout_combos: (noun, year) pairs never trained, "
        "years seen with other nouns; heldout_years: (XX, YY) pairs never trained with any noun; train_set: a "
        "sample of training rows. prob_diff = p(YY' > YY) - p(YY' <= YY) on the clean prompt; "
        "prob_diff_corrupted = the same sets on the prompt with YY = 01; accuracy = top-1 token is a YY' > YY; "
        "p_wrong_near = probability of YY' in YY-9..YY",
        "task": task_prob_diff(model, build_tokenizer(data.n_positions), n=min(500, spec.eval_size), seed=0),
        "task_note": "circuits.load_task('greater-than', tokenizer, n=min(500, eval_size), seed=0, prepend_bos=True): "
        "examples sampled from all years and nouns (training and held-out)",
        "train_seconds": round(train_seconds, 1),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "data": asdict(data),
        "train": asdict(spec),
        "ablation_prob_diff": ablation_prob_diff(model, combos),
        "ablation_note": "heldout_combos metrics (see heldout_note) with components ablated: a{l}.h{h} = a head's "
        "output before W_O, m{l} = an MLP's output, a{l}.* = all heads of layer l, m* = every MLP, a* = every head; "
        "zero = set to 0, mean = its mean over the held-out prompts, per position; none = no ablation",
        "last_position_attention": last_position_attention(model, combos),
        "last_position_attention_note": "mean attention of each head from the last position (the second XX) to "
        "each position, on the heldout_combos prompts",
    }
    return model, summary


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point; returns the summary written to ``training.json``."""
    parser = base_parser(__doc__, TrainSpec)
    args = parser.parse_args(argv)
    data = DataSpec()
    spec = TrainSpec(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, eval_size=args.eval_size, threads=args.threads
    )
    model, summary = train(args.seed, data, spec)
    save_run(args.out, model, build_tokenizer(data.n_positions), summary, "circuits.zoo.train.greater_than", argv, spec.threads)
    print(json.dumps({k: summary[k] for k in ("final_train_loss", "heldout_combos", "heldout_years", "task",
                                              "train_seconds")}, indent=2))
    return summary


if __name__ == "__main__":
    main()
