"""Train ``induction-2l``: a 2-layer, attention-only GPT-2 that learns induction.

Data: a sequence of length ``T`` is ``<bos>`` followed by ``T - 1`` content tokens laid
out as ``noise (T - 1 - 2L tokens) + segment (L tokens) + the same segment again``, with
``L`` uniform in ``[min_repeat, min(max_repeat, (T - 1) // 2)]``. The noise and the first
copy are distinct tokens drawn without replacement from ``t0 .. t{N-1}``, so each token of
the second copy has exactly one earlier occurrence. Only the second copy (after its first
token) is predictable, and exactly by induction: attend to the token after the previous
occurrence of the current token and copy it. (The textbook circuit is a previous-token head
in layer 0 feeding an induction head in layer 1; the shipped model learned a shifted variant,
two layer-0 heads looking back by offsets ``d`` and ``d - 1``: see docs/zoo.md.) The loss is
the cross-entropy on those targets only: the other positions carry no learnable signal.

Each training batch has its own length ``T``, uniform in ``[min_len, seq_len]``: short
contexts are meant to give the induction mechanism a strong gradient early; evaluation
uses full-length sequences (``T = seq_len``).

Attention-only: ``transformers``' GPT-2 always has an MLP per block. Here every MLP
(``c_fc``, ``c_proj``) and the LayerNorm in front of it (``ln_2``) are set to zero and
frozen, and ``n_inner`` is tiny; GELU(0) = 0, so each MLP's output is exactly zero and
the model computes the same function as an attention-only transformer while loading
as a standard ``GPT2LMHeadModel``.

Usage::

    python -m circuits.zoo.train.induction --out circuits/zoo/models/induction-2l --seed 0
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import torch
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

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
    "build_model",
    "build_tokenizer",
    "evaluate",
    "head_ablation_accuracy",
    "head_pattern_scores",
    "main",
    "make_batch",
    "train",
]


@dataclass(frozen=True)
class DataSpec:
    """Shape of the synthetic induction data."""

    n_content: int = 60  # content tokens t0 .. t59; vocab = 64 with the specials
    seq_len: int = 64  # maximum length, including <bos> (= n_positions)
    min_len: int = 12  # shortest training batch
    min_repeat: int = 4
    max_repeat: int = 31  # 2 * max_repeat <= seq_len - 1

    @property
    def vocab_size(self) -> int:
        return self.n_content + len(SPECIAL_TOKENS)


@dataclass(frozen=True)
class TrainSpec:
    """Model size and optimisation settings."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    n_inner: int = 4  # MLPs are zero and frozen (see module docstring)
    steps: int = 6000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100
    decay_from: float = 0.75  # constant LR until this fraction of the steps, then cosine to 10%
    eval_size: int = 1024
    threads: int = 1  # as fast as 2 for this size; 2 threads stall badly on a shared machine


def build_tokenizer(n_content: int, seq_len: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``t0 .. t{n_content-1}``; encoding prepends ``<bos>``.

    Text is whitespace-separated token names (``"t5 t17 t5"``); decoding joins them
    with spaces. Unknown words map to ``<unk>``.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for k in range(n_content):
        vocab[f"t{k}"] = k + len(SPECIAL_TOKENS)
    return word_level_tokenizer(vocab, WhitespaceSplit(), seq_len)


def build_model(data: DataSpec, spec: TrainSpec) -> GPT2LMHeadModel:
    """A GPT-2 with zeroed, frozen MLPs (attention-only in function), no dropout."""
    config = gpt2_config(data.vocab_size, data.seq_len, spec.n_embd, spec.n_layer, spec.n_head, spec.n_inner)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for block in model.transformer.h:
            for param in list(block.mlp.parameters()) + list(block.ln_2.parameters()):
                param.zero_()
                param.requires_grad_(False)
    return model


def make_batch(
    n: int, data: DataSpec, generator: torch.Generator, seq_len: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample ``n`` induction sequences of length ``seq_len`` (default ``data.seq_len``).

    Row layout: ``<bos>``, then ``seq_len - 1 - 2L`` noise tokens, an ``L``-token segment
    and the same segment again (``L`` uniform in ``[min_repeat, min(max_repeat,
    (seq_len - 1) // 2)]``). The noise and the first copy are drawn *without
    replacement*, so every token of the second copy occurs exactly once before it: the
    induction target is unambiguous.

    Returns:
        ids: ``(n, seq_len)`` token ids, ``ids[:, 0] == <bos>``.
        repeat_len: ``(n,)`` segment length ``L`` of each row.
        target_mask: ``(n, seq_len)`` bool, True at positions ``p`` whose *next* token
            ``ids[p + 1]`` is predictable by induction (the second copy, after its first
            token). Use as ``logits[:, :-1][mask[:, :-1]]`` vs ``ids[:, 1:][mask[:, :-1]]``.
    """
    seq_len = data.seq_len if seq_len is None else seq_len
    body = seq_len - 1
    max_repeat = min(data.max_repeat, body // 2)
    if seq_len > data.seq_len or max_repeat < data.min_repeat or data.min_repeat < 2:
        raise ValueError(f"cannot fit a repeat of {data.min_repeat}..{data.max_repeat} tokens in length {seq_len}")
    if body - data.min_repeat > data.n_content:
        raise ValueError(f"{data.n_content} content tokens cannot fill {body - data.min_repeat} distinct slots")
    offset = len(SPECIAL_TOKENS)
    # a random permutation per row: the first `body` entries are distinct tokens
    tokens = torch.rand(n, data.n_content, generator=generator).argsort(dim=1)[:, :body] + offset
    repeat_len = torch.randint(data.min_repeat, max_repeat + 1, (n,), generator=generator)
    pos = torch.arange(body).expand(n, body)
    second_start = (body - repeat_len).unsqueeze(1)  # second copy occupies [body - L, body)
    source = torch.where(pos >= second_start, pos - repeat_len.unsqueeze(1), pos)
    tokens = torch.gather(tokens, 1, source)
    ids = torch.cat([torch.full((n, 1), BOS_ID), tokens], dim=1)
    # ids position p predicts ids[p + 1]; predictable iff ids index p + 1 lies in the second
    # copy and is not its first token: p + 1 >= 1 + second_start + 1.
    ids_pos = torch.arange(seq_len).expand(n, seq_len)
    target_mask = (ids_pos >= second_start + 1) & (ids_pos < seq_len - 1)
    return ids, repeat_len, target_mask


@torch.no_grad()
def evaluate(model: GPT2LMHeadModel, ids: torch.Tensor, target_mask: torch.Tensor) -> dict[str, float]:
    """Loss over all next-token positions, loss and accuracy on the induction targets."""
    model.eval()
    logits = model(input_ids=ids).logits[:, :-1].float()
    targets = ids[:, 1:]
    mask = target_mask[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    correct = logits.argmax(-1) == targets
    return {
        "loss_all": nll.mean().item(),
        "loss_repeat": nll[mask].mean().item(),
        "accuracy_repeat": correct[mask].float().mean().item(),
    }


@torch.no_grad()
def head_pattern_scores(
    model: GPT2LMHeadModel, ids: torch.Tensor, repeat_len: torch.Tensor, max_offset: int = 8
) -> dict[str, dict[str, float | int]]:
    """Per-head attention diagnostics on induction data (patterns, not a circuit).

    For every head, with ``q`` a query position and ``j = q - L`` the previous occurrence
    of the token at ``q`` (queries in the second copy only, for the ``*_after_prev`` keys):

    * ``prev_token``: mean attention from ``q`` to ``q - 1`` (queries ``q > max_offset``);
    * ``top_offset`` / ``top_offset_attention``: the offset ``o`` in ``0..max_offset``
      maximising the mean attention from ``q`` to ``q - o`` (same queries), and that attention;
    * ``induction``: mean attention to ``j + 1`` (the classic induction target);
    * ``top_after_prev`` / ``top_after_prev_attention``: the ``delta`` in
      ``0..max_offset`` maximising the mean attention to ``j + delta``, and that attention.
    """
    model.eval()
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # sdpa does not return attention patterns
    try:
        attentions = model(input_ids=ids, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(previous)
    n, seq_len = ids.shape
    pos = torch.arange(seq_len)
    queries = pos.expand(n, seq_len) >= (seq_len - repeat_len).unsqueeze(1)  # second copy
    out: dict[str, dict[str, float | int]] = {}
    for layer, attn in enumerate(attentions):  # (n, heads, q, k)
        n_heads = attn.shape[1]
        late = pos[max_offset + 1 :]  # queries with every offset available and not next to <bos>
        by_offset = torch.stack(
            [attn[:, :, late, late - o].mean(dim=(0, 2)) for o in range(max_offset + 1)]
        )  # (offsets, heads)
        by_delta = []
        for delta in range(max_offset + 1):
            keys = (pos.expand(n, seq_len) - repeat_len.unsqueeze(1) + delta).clamp(0, seq_len - 1)
            valid = queries & (keys <= pos)
            picked = torch.gather(attn, 3, keys[:, None, :, None].expand(-1, n_heads, -1, 1))[..., 0]
            by_delta.append((picked * valid[:, None]).sum(dim=(0, 2)) / valid.sum().clamp(min=1))
        by_delta_t = torch.stack(by_delta)  # (deltas, heads)
        for head in range(n_heads):
            top_o = int(by_offset[:, head].argmax())
            top_d = int(by_delta_t[:, head].argmax())
            out[f"a{layer}.h{head}"] = {
                "prev_token": round(by_offset[1, head].item(), 4),
                "top_offset": top_o,
                "top_offset_attention": round(by_offset[top_o, head].item(), 4),
                "induction": round(by_delta_t[1, head].item(), 4),
                "top_after_prev": top_d,
                "top_after_prev_attention": round(by_delta_t[top_d, head].item(), 4),
            }
    return out


@torch.no_grad()
def head_ablation_accuracy(model: GPT2LMHeadModel, ids: torch.Tensor, target_mask: torch.Tensor) -> dict[str, float]:
    """Induction accuracy with one head zero-ablated at a time (its output before ``W_O`` set to 0)."""
    head_dim = model.config.n_embd // model.config.n_head
    out: dict[str, float] = {}
    for layer, block in enumerate(model.transformer.h):
        for head in range(model.config.n_head):

            def zero_head(module: torch.nn.Module, args: tuple, head: int = head) -> tuple:
                z = args[0].clone()
                z[..., head * head_dim : (head + 1) * head_dim] = 0
                return (z,) + tuple(args[1:])

            handle = block.attn.c_proj.register_forward_pre_hook(zero_head)
            try:
                out[f"a{layer}.h{head}"] = round(evaluate(model, ids, target_mask)["accuracy_repeat"], 4)
            finally:
                handle.remove()
    return out


def _repeat_loss(logits: torch.Tensor, ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the induction targets only (see the module docstring)."""
    mask = target_mask[:, :-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1][mask], ids[:, 1:][mask])


def _lr_at(step: int, spec: TrainSpec) -> float:
    """Linear warmup, constant (the induction phase change needs it), then cosine to 10%."""
    return warmup_cosine(step, spec.lr, spec.warmup, spec.steps, int(spec.decay_from * spec.steps))


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
    recent: list[float] = []
    model.train()
    for step in range(spec.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, spec)
        length = int(torch.randint(data.min_len, data.seq_len + 1, (1,), generator=train_gen))
        ids, _, mask = make_batch(spec.batch_size, data, train_gen, seq_len=length)
        loss = _repeat_loss(model(input_ids=ids).logits, ids, mask)
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
    ids, repeat_len, mask = make_batch(spec.eval_size, data, eval_gen)
    metrics = evaluate(model, ids, mask)
    by_length = {}
    for length in (16, 32, 48):
        short_ids, _, short_mask = make_batch(spec.eval_size, data, eval_gen, seq_len=length)
        by_length[str(length)] = round(evaluate(model, short_ids, short_mask)["accuracy_repeat"], 4)
    summary = {
        "seed": seed,
        "steps": spec.steps,
        "final_train_loss": round(sum(recent) / max(1, len(recent)), 4),
        "final_train_loss_note": "cross-entropy on the induction targets, mean of the last 100 steps",
        "heldout": {k: round(v, 4) for k, v in metrics.items()},
        "heldout_note": f"{spec.eval_size} fresh full-length ({data.seq_len}) sequences, generator seed = "
        "seed + 1000003; accuracy_repeat = greedy next-token accuracy on the repeated half (after its "
        "first token); loss_all includes the unpredictable positions, on which the model is not trained",
        "heldout_accuracy_by_length": by_length,
        "train_seconds": round(train_seconds, 1),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "data": asdict(data),
        "train": asdict(spec),
        "zero_ablation_accuracy_repeat": head_ablation_accuracy(model, ids, mask),
        "zero_ablation_note": "accuracy_repeat on the held-out set with one head's output zeroed",
        "head_patterns_note": "head_pattern_scores() on 256 held-out sequences of length 24 and 64",
        "head_patterns": {
            str(length): head_pattern_scores(model, *make_batch(256, data, eval_gen, seq_len=length)[:2])
            for length in (24, data.seq_len)
        },
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
    save_run(args.out, model, build_tokenizer(data.n_content, data.seq_len), summary, "circuits.zoo.train.induction", argv, spec.threads)
    print(json.dumps({k: summary[k] for k in ("final_train_loss", "heldout", "train_seconds")}, indent=2))
    return summary


if __name__ == "__main__":
    main()
