"""Train ``ioi-3l``: a 3-layer GPT-2 that does indirect object identification (IOI).

Data: sentences from the IOI task's own templates, names, places and objects
(``circuits.tasks.ioi``), e.g. ``"When Mary and John went to the store, John gave a drink
to"``, both name orders (ABBA: IO first; BABA: subject first) with equal probability,
prefixed by ``<bos>``. The target is the indirect object (``Mary``) after the final "to".
The loss is the cross-entropy on that target, plus (weight ``lm_weight``) the next-token
loss on every other position of the prompt (template words, places, objects, the repeated
subject); the random first-clause names are unpredictable and only add a constant.

Every word of ``circuits.tasks.ioi.words()`` is in the word-level vocabulary; "," and "."
are tokens of their own (pre-tokenizer ``Whitespace``: ``\\w+|[^\\w\\s]+``), so a prompt
never contains ``<unk>`` and every name is one token, in the clean and in the ABC-corrupted
prompts alike (same length).

Held-out evaluation: fresh sentences from a generator seeded with ``seed + 1000003``.
Names, templates, places and objects are the same as in training (the task uses them all);
the name pairs and combinations are mostly unseen.

Usage::

    python -m circuits.zoo.train.ioi --out circuits/zoo/models/ioi-3l --seed 0
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass

import torch
from tokenizers.pre_tokenizers import Whitespace
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from circuits.tasks import ioi
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
    "DataSpec",
    "TrainSpec",
    "Batch",
    "build_model",
    "build_tokenizer",
    "evaluate",
    "head_ablation",
    "head_pattern_scores",
    "main",
    "make_batch",
    "train",
    "vocabulary",
]

_WORD = re.compile(r"\w+|[^\w\s]+")  # what the `Whitespace` pre-tokenizer splits on
_SLOTS = {"{A}": "A", "{B}": "B", "{S}": "S", "{place}": "place", "{object}": "object"}


@dataclass(frozen=True)
class DataSpec:
    """Shape of the IOI data."""

    seq_len: int = 32  # n_positions; the longest prompt is 20 tokens with <bos>


@dataclass(frozen=True)
class TrainSpec:
    """Model size and optimisation settings."""

    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 64
    n_inner: int = 256
    steps: int = 2500
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100
    lm_weight: float = 0.2  # weight of the next-token loss on the other prompt positions
    eval_size: int = 2048
    threads: int = 1


def vocabulary() -> list[str]:
    """Vocabulary in id order: specials, the names (task order), then the other words sorted."""
    names = list(ioi.names())
    pieces: set[str] = set()
    for word in ioi.words():
        pieces.update(_WORD.findall(word))
    others = sorted(pieces - set(names))
    return list(SPECIAL_TOKENS) + names + others


def build_tokenizer(seq_len: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over :func:`vocabulary`; encoding prepends ``<bos>``.

    Pre-tokenizer ``Whitespace`` (``\\w+|[^\\w\\s]+``): punctuation is split from words.
    Unknown words map to ``<unk>``.
    """
    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    return word_level_tokenizer(vocab, Whitespace(), seq_len)


def build_model(data: DataSpec, spec: TrainSpec) -> GPT2LMHeadModel:
    """A standard GPT-2 (with MLPs), no dropout, tied embeddings."""
    config = gpt2_config(len(vocabulary()), data.seq_len, spec.n_embd, spec.n_layer, spec.n_head, spec.n_inner)
    return GPT2LMHeadModel(config)


@dataclass
class Batch:
    """Right-padded IOI prompts.

    ``ids``: ``(n, T)`` with ``<bos>`` first and ``<pad>`` after the prompt; ``length``: prompt
    length (the last prompt token, "to", is at ``length - 1``); ``io`` / ``s``: token ids of the
    indirect object and the subject; ``io_pos`` / ``s1_pos`` / ``s2_pos``: positions of IO, of the
    subject's first occurrence and of its repetition; ``order``: 0 = ABBA, 1 = BABA; ``template``.
    """

    ids: torch.Tensor
    length: torch.Tensor
    io: torch.Tensor
    s: torch.Tensor
    io_pos: torch.Tensor
    s1_pos: torch.Tensor
    s2_pos: torch.Tensor
    order: torch.Tensor
    template: torch.Tensor

    @property
    def end_pos(self) -> torch.Tensor:
        return self.length - 1


def _template_tokens() -> list[list[str]]:
    """Each template as a list of word tokens, slots kept as ``{A}`` etc."""
    out = []
    for template in ioi.TEMPLATES:
        toks: list[str] = []
        for word in template.split():
            slot = next((s for s in _SLOTS if s in word), None)
            if slot is None:
                toks += _WORD.findall(word)
            else:
                before, after = word.split(slot)
                toks += _WORD.findall(before) + [slot] + _WORD.findall(after)
        out.append(toks)
    return out


def make_batch(n: int, generator: torch.Generator, seq_len: int = DataSpec.seq_len) -> Batch:
    """Sample ``n`` IOI prompts (template, place, object, 2 distinct names, order uniform)."""
    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    templates = _template_tokens()
    name_ids = torch.tensor([vocab[x] for x in ioi.names()])
    place_ids = torch.tensor([vocab[x] for x in ioi.PLACES])
    object_ids = torch.tensor([vocab[x] for x in ioi.OBJECTS])
    t_idx = torch.randint(len(templates), (n,), generator=generator)
    place = place_ids[torch.randint(len(place_ids), (n,), generator=generator)]
    obj = object_ids[torch.randint(len(object_ids), (n,), generator=generator)]
    pair = torch.rand(n, len(name_ids), generator=generator).argsort(dim=1)[:, :2]
    io, s = name_ids[pair[:, 0]], name_ids[pair[:, 1]]
    order = torch.randint(2, (n,), generator=generator)  # 0: ABBA, 1: BABA
    ids = torch.full((n, seq_len), PAD_ID, dtype=torch.long)
    length = torch.zeros(n, dtype=torch.long)
    io_pos, s1_pos, s2_pos = (torch.zeros(n, dtype=torch.long) for _ in range(3))
    for i in range(n):
        a, b = (io[i], s[i]) if order[i] == 0 else (s[i], io[i])
        fill = {"{A}": a, "{B}": b, "{S}": s[i], "{place}": place[i], "{object}": obj[i]}
        row = [BOS_ID]
        for tok in templates[int(t_idx[i])]:
            if tok in fill:
                if tok == "{A}":
                    (io_pos if order[i] == 0 else s1_pos)[i] = len(row)
                elif tok == "{B}":
                    (s1_pos if order[i] == 0 else io_pos)[i] = len(row)
                elif tok == "{S}":
                    s2_pos[i] = len(row)
                row.append(int(fill[tok]))
            else:
                row.append(vocab[tok])
        ids[i, : len(row)] = torch.tensor(row)
        length[i] = len(row)
    return Batch(ids, length, io, s, io_pos, s1_pos, s2_pos, order, t_idx)


def _losses(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(IO loss at the last prompt position, mean next-token loss on the other prompt positions)."""
    n, seq_len, _ = logits.shape
    arange = torch.arange(n)
    io_loss = torch.nn.functional.cross_entropy(logits[arange, batch.end_pos], batch.io)
    pos = torch.arange(seq_len - 1).expand(n, -1)
    mask = pos < (batch.end_pos.unsqueeze(1))  # positions 0 .. end-1 predict a prompt token
    lm_loss = torch.nn.functional.cross_entropy(logits[:, :-1][mask], batch.ids[:, 1:][mask])
    return io_loss, lm_loss


@torch.no_grad()
def evaluate(model: GPT2LMHeadModel, batch: Batch) -> dict[str, float]:
    """IO loss, top-1 accuracy (IO is the argmax over the vocabulary), IO > S rate, logit diff IO - S."""
    model.eval()
    logits = model(input_ids=batch.ids).logits.float()
    arange = torch.arange(len(batch.io))
    end = logits[arange, batch.end_pos]
    diff = end[arange, batch.io] - end[arange, batch.s]
    out = {
        "loss_io": torch.nn.functional.cross_entropy(end, batch.io).item(),
        "accuracy": (end.argmax(-1) == batch.io).float().mean().item(),
        "io_over_s": (diff > 0).float().mean().item(),
        "logit_diff": diff.mean().item(),
    }
    for order, label in ((0, "ABBA"), (1, "BABA")):
        sel = batch.order == order
        out[f"accuracy_{label}"] = (end[sel].argmax(-1) == batch.io[sel]).float().mean().item()
        out[f"logit_diff_{label}"] = diff[sel].mean().item()
    return out


@torch.no_grad()
def head_pattern_scores(model: GPT2LMHeadModel, batch: Batch) -> dict[str, dict[str, float]]:
    """Per-head mean attention (patterns, not a circuit).

    ``end_to_io`` / ``end_to_s1`` / ``end_to_s2``: from the last position ("to") to the IO name,
    the subject's first occurrence, and its repetition; ``s2_to_s1``: from the repeated subject to
    its first occurrence (a duplicate-token head); ``s2_to_io``: from the repeated subject to IO;
    ``s1p1_to_s1``: from the token after S1 to S1 (a previous-token head, for induction).
    """
    model.eval()
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # sdpa does not return attention patterns
    try:
        attentions = model(input_ids=batch.ids, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(previous)
    arange = torch.arange(len(batch.io))
    pairs = {
        "end_to_io": (batch.end_pos, batch.io_pos),
        "end_to_s1": (batch.end_pos, batch.s1_pos),
        "end_to_s2": (batch.end_pos, batch.s2_pos),
        "s2_to_s1": (batch.s2_pos, batch.s1_pos),
        "s2_to_io": (batch.s2_pos, batch.io_pos),
        "s1p1_to_s1": (batch.s1_pos + 1, batch.s1_pos),
    }
    out: dict[str, dict[str, float]] = {}
    for layer, attn in enumerate(attentions):  # (n, heads, q, k)
        for head in range(attn.shape[1]):
            out[f"a{layer}.h{head}"] = {
                key: round(attn[arange, head, q, k].mean().item(), 4) for key, (q, k) in pairs.items()
            }
    return out


@torch.no_grad()
def head_ablation(model: GPT2LMHeadModel, batch: Batch, mean: bool = False) -> dict[str, dict[str, float]]:
    """Accuracy and logit diff with one head ablated at a time (its output before ``W_O``).

    ``mean=False``: set to 0; ``mean=True``: replaced by its mean over the batch, per position.
    """
    head_dim = model.config.n_embd // model.config.n_head
    out: dict[str, dict[str, float]] = {}
    for layer, block in enumerate(model.transformer.h):
        means: dict[str, torch.Tensor] = {}
        if mean:
            grab = block.attn.c_proj.register_forward_pre_hook(lambda m, args, means=means: means.__setitem__("z", args[0].mean(0)))
            try:
                model(input_ids=batch.ids)
            finally:
                grab.remove()
        for head in range(model.config.n_head):
            sl = slice(head * head_dim, (head + 1) * head_dim)

            def ablate(module: torch.nn.Module, args: tuple, sl: slice = sl, means: dict = means) -> tuple:
                z = args[0].clone()
                z[..., sl] = means["z"][..., sl] if mean else 0
                return (z,) + tuple(args[1:])

            handle = block.attn.c_proj.register_forward_pre_hook(ablate)
            try:
                metrics = evaluate(model, batch)
            finally:
                handle.remove()
            out[f"a{layer}.h{head}"] = {
                "accuracy": round(metrics["accuracy"], 4),
                "logit_diff": round(metrics["logit_diff"], 3),
            }
    return out


def _lr_at(step: int, spec: TrainSpec) -> float:
    """Linear warmup, then cosine to 10%."""
    return warmup_cosine(step, spec.lr, spec.warmup, spec.steps)


def train(seed: int, data: DataSpec, spec: TrainSpec, log_every: int = 250) -> tuple[GPT2LMHeadModel, dict]:
    """Train from scratch; returns the model (eval mode) and a summary dict.

    Runs with ``spec.threads`` torch threads and the global RNG seeded with ``seed``
    (initialisation); both are restored on return. Data come from generators seeded with
    ``seed`` (training) and ``seed + 1000003`` (held-out evaluation).
    """
    with isolated_torch_state(spec.threads):
        torch.manual_seed(seed)
        return _train(seed, data, spec, log_every)


def _train(seed: int, data: DataSpec, spec: TrainSpec, log_every: int) -> tuple[GPT2LMHeadModel, dict]:
    model = build_model(data, spec)
    optimizer, params = adamw(model, spec.lr, spec.weight_decay)
    train_gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    recent_io: list[float] = []
    recent_lm: list[float] = []
    model.train()
    for step in range(spec.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, spec)
        batch = make_batch(spec.batch_size, train_gen, data.seq_len)
        longest = int(batch.length.max())
        batch.ids = batch.ids[:, :longest]
        io_loss, lm_loss = _losses(model(input_ids=batch.ids).logits, batch)
        loss = io_loss + spec.lm_weight * lm_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        recent_io = (recent_io + [io_loss.item()])[-100:]
        recent_lm = (recent_lm + [lm_loss.item()])[-100:]
        if log_every and (step + 1) % log_every == 0:
            print(
                f"step {step + 1:5d}  io loss {sum(recent_io) / len(recent_io):.4f}  "
                f"lm loss {sum(recent_lm) / len(recent_lm):.4f}  {time.perf_counter() - start:.1f}s",
                flush=True,
            )
    train_seconds = time.perf_counter() - start
    model.eval()
    eval_gen = torch.Generator().manual_seed(seed + 1_000_003)
    heldout = make_batch(spec.eval_size, eval_gen, data.seq_len)
    metrics = evaluate(model, heldout)
    summary = {
        "seed": seed,
        "steps": spec.steps,
        "final_train_loss": round(sum(recent_io) / max(1, len(recent_io)), 4),
        "final_train_loss_note": "cross-entropy of the IO name at the last position, mean of the last 100 steps",
        "final_train_lm_loss": round(sum(recent_lm) / max(1, len(recent_lm)), 4),
        "final_train_lm_loss_note": "next-token cross-entropy on the other prompt positions (weight lm_weight), "
        "mean of the last 100 steps; includes the unpredictable first-clause names",
        "heldout": {k: round(v, 4) for k, v in metrics.items()},
        "heldout_note": f"{spec.eval_size} fresh prompts, generator seed = seed + 1000003; accuracy = the IO name is "
        "the argmax over the whole vocabulary; io_over_s = logit(IO) > logit(S); "
        "logit_diff = mean logit(IO) - logit(S)",
        "train_seconds": round(train_seconds, 1),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "data": asdict(data),
        "train": asdict(spec),
        "zero_ablation": head_ablation(model, heldout),
        "mean_ablation": head_ablation(model, heldout, mean=True),
        "ablation_note": "held-out accuracy and logit diff with one head's output (before W_O) zeroed, or replaced by "
        "its mean over the held-out prompts at each position (mean_ablation)",
        "head_patterns": head_pattern_scores(model, heldout),
        "head_patterns_note": "head_pattern_scores() on the held-out prompts: mean attention from the last position "
        "(end) to IO / S1 / S2, from S2 to S1 and IO, and from S1+1 to S1",
    }
    return model, summary


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point; returns the summary written to ``training.json``."""
    parser = base_parser(__doc__, TrainSpec)
    parser.add_argument("--lm-weight", type=float, default=TrainSpec.lm_weight)
    parser.add_argument("--n-layer", type=int, default=TrainSpec.n_layer)
    parser.add_argument("--n-head", type=int, default=TrainSpec.n_head)
    parser.add_argument("--n-embd", type=int, default=TrainSpec.n_embd, help="d_model (MLP width 4x)")
    parser.add_argument("--weight-decay", type=float, default=TrainSpec.weight_decay)
    args = parser.parse_args(argv)
    data = DataSpec()
    spec = TrainSpec(
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        n_inner=4 * args.n_embd,
        weight_decay=args.weight_decay,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        lm_weight=args.lm_weight,
        eval_size=args.eval_size,
        threads=args.threads,
    )
    model, summary = train(args.seed, data, spec)
    save_run(args.out, model, build_tokenizer(data.seq_len), summary, "circuits.zoo.train.ioi", argv, spec.threads)
    print(json.dumps({k: summary[k] for k in ("final_train_loss", "heldout", "train_seconds")}, indent=2))
    return summary


if __name__ == "__main__":
    main()
