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


def _family_config(family: str, quick: bool, expert_width: int | None = None):
    """A ~100M-parameter config of ``family`` (d 768, 12 layers x 12 heads, vocab 16000; MoE: 8 experts
    of width ``expert_width``, default 256, top 2), or a 2-layer d 64 one with ``quick``."""
    import transformers as tf

    L, H, d, V = (2, 4, 64, 512) if quick else (12, 12, 768, 16000)
    base = dict(vocab_size=V, hidden_size=d, num_hidden_layers=L, num_attention_heads=H, max_position_embeddings=512,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)
    gqa = dict(base, num_key_value_heads=H // 2 if quick else 4)
    width = expert_width or (64 if quick else 256)  # expert width (grouped_mm wants 16-byte strides)
    moe = dict(num_experts_per_tok=2, intermediate_size=width)
    if family == "gpt2":
        return tf.GPT2Config(n_layer=L, n_head=H, n_embd=d, vocab_size=V)
    if family == "gptj":
        return tf.GPTJConfig(n_layer=L, n_head=H, n_embd=d, vocab_size=V, n_positions=512, rotary_dim=d // H // 2,
                             bos_token_id=1, eos_token_id=2)
    if family in ("llama", "qwen3", "phi3"):
        cls = {"llama": tf.LlamaConfig, "qwen3": tf.Qwen3Config, "phi3": tf.Phi3Config}[family]
        return cls(**gqa, intermediate_size=d * 8 // 3)
    if family == "mixtral":
        return tf.MixtralConfig(**gqa, **moe, num_local_experts=8)
    if family == "qwen2_moe":
        return tf.Qwen2MoeConfig(**gqa, **moe, num_experts=8, moe_intermediate_size=width,
                                 shared_expert_intermediate_size=2 * width)
    if family == "olmoe":
        return tf.OlmoeConfig(**gqa, **moe, num_experts=8)
    if family in ("gemma2", "gemma3"):  # post-norm; every other layer sliding-window (window 16 of 32 tokens)
        cls = tf.Gemma2Config if family == "gemma2" else tf.Gemma3TextConfig
        return cls(**gqa, head_dim=d // H, query_pre_attn_scalar=d // H, intermediate_size=4 * d, sliding_window=16)
    if family == "olmo2":  # post-norm, q/k norms over the whole projection
        return tf.Olmo2Config(**gqa, intermediate_size=d * 8 // 3)
    raise KeyError(family)


BENCH_FAMILIES = ("gpt2", "gptj", "llama", "qwen3", "phi3", "mixtral", "qwen2_moe", "olmoe", "gemma2", "gemma3", "olmo2")
"""Families ``bench_forward.py --family`` can build."""


def family_model(family: str, quick: bool = False, seed: int = 0, expert_width: int | None = None):
    """A random-init model of ``family`` (``gpt2`` = GPT-2 small), float32, eval mode, sdpa attention (Gemma-2:
    eager) (``expert_width``: mixture-of-experts families' expert width instead of the default 256)."""
    if family == "gpt2":
        return gpt2_small(quick, seed)
    torch.manual_seed(seed)
    config = _family_config(family, quick, expert_width)
    # transformers runs Gemma-2 (attention logit soft-capping) with its eager attention only
    attn = "eager" if family == "gemma2" else "sdpa"
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


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


def interleaved_best(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Seconds of the fastest run of each function, timed in rounds that run every function once
    (after one warm-up round). A ratio of two of them then compares runs taken minutes apart at
    most a round apart: this machine's speed drifts by up to 1.8x over minutes even when idle."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def proc_status_bytes(field: str) -> int:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...) in bytes (Linux)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS mark (``VmHWM``) from the current RSS (Linux: ``/proc/self/clear_refs`` = 5)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


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
