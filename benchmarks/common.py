"""Shared helpers for the benchmark scripts: model set-up, timing, peak memory."""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM, GPT2Config

from circuits.tasks.base import Batch


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="best of N after one warm-up")
    p.add_argument("--quick", action="store_true", help="tiny 2-layer model (smoke test)")
    return p


def gpt2_small(quick: bool = False, seed: int = 0):
    """GPT-2-small shape (or a tiny config with --quick), random init, float32, eval mode."""
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=512) if quick else GPT2Config()
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def random_batch(vocab: int, B: int, P: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        clean=torch.randint(0, vocab, (B, P), generator=g),
        corrupted=torch.randint(0, vocab, (B, P), generator=g),
        attention_mask=torch.ones(B, P, dtype=torch.long),
        answers=torch.randint(0, vocab, (B, 1), generator=g),
        wrong=torch.randint(0, vocab, (B, 1), generator=g),
        answer_pos=torch.full((B,), P - 1),
    )


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` runs after one warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_forward(model, batch: Batch) -> Callable[[], object]:
    def run():
        with torch.no_grad():
            return model(batch.clean, attention_mask=batch.attention_mask).logits

    return run


def bare_forward_backward(model, batch: Batch) -> Callable[[], object]:
    """The floor for attribution: one forward and one backward of the plain model (param grads included)."""
    from circuits.metrics import logit_diff

    def run():
        model.zero_grad(set_to_none=True)
        logits = model(batch.clean, attention_mask=batch.attention_mask).logits
        (-logit_diff(logits, batch).sum()).backward()

    return run


def setup(args, extra: str = ""):
    """Model, traced model and batch from the common options; prints the set-up line."""
    from circuits import TracedModel

    torch.set_num_threads(args.threads)
    model = gpt2_small(args.quick)
    tm = TracedModel(model)
    b = random_batch(model.config.vocab_size, args.batch, args.tokens)
    print(f"model: {model.config.n_layer} layers x {model.config.n_head} heads, d={model.config.n_embd}; "
          f"edges={tm.layout.n_edges}; batch {args.batch} x {args.tokens}; threads={torch.get_num_threads()}{extra}")
    return model, tm, b
