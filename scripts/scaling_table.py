"""Print docs/scaling.md's table: the memory planner's estimates for published model shapes (no weights).

    python scripts/scaling_table.py > /tmp/table.md

Configs are built in code from each model's published shape; parameter counts come from the model
built on the meta device. The planner models the additive families' code paths; for Gemma-2 (a
post-norm family) it does not count the per-receiver post-norm inputs of masked forwards
(docs/concepts.md, "Post-norm families"), so its patching rows are approximate (they count the
additive families' buffers instead). Float32 and bfloat16 as given; the examples of a split = the batch.

GPUs for data parallelism: the fewest GPUs of each size such that one GPU's share of the 32
examples fits in 90 % of its memory (the model is replicated, the batch split). Edge parallelism
(exact effects, curves: masks split over GPUs) splits the work but not the per-GPU floor, which is
the estimate with one mask per forward: listed as "floor".
"""

from __future__ import annotations

import math

from transformers import AutoConfig

from circuits.planning import MARGIN, estimate, format_bytes, shape_of

MODELS: dict[str, tuple[str, dict]] = {
    "GPT-2 small": ("gpt2", {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257}),
    "Pythia-1.4B": ("gpt_neox", {"num_hidden_layers": 24, "num_attention_heads": 16, "hidden_size": 2048,
                                 "intermediate_size": 8192, "vocab_size": 50304, "rotary_pct": 0.25,
                                 "use_parallel_residual": True, "tie_word_embeddings": False}),
    "Qwen2.5-0.5B": ("qwen2", {"num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                               "hidden_size": 896, "intermediate_size": 4864, "vocab_size": 151936,
                               "tie_word_embeddings": True}),
    "Qwen2.5-7B": ("qwen2", {"num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                             "hidden_size": 3584, "intermediate_size": 18944, "vocab_size": 152064,
                             "tie_word_embeddings": False}),
    "Gemma-2-2B": ("gemma2", {"num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
                              "head_dim": 256, "hidden_size": 2304, "intermediate_size": 9216, "vocab_size": 256000,
                              "tie_word_embeddings": True}),
    "Llama-3.1-8B": ("llama", {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                               "hidden_size": 4096, "intermediate_size": 14336, "vocab_size": 128256,
                               "tie_word_embeddings": False}),
    "Llama-3.1-70B": ("llama", {"num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
                                "hidden_size": 8192, "intermediate_size": 28672, "vocab_size": 128256,
                                "tie_word_embeddings": False}),
}
METHODS = ("eap", "eap-ig-inputs", "exact", "curve")
TOKENS, BATCH = 128, 32
GPU_GIB = (24, 80)


def gpus(shape, method: str, gib: int) -> str:
    """Fewest GPUs of ``gib`` GiB for the 32 examples split over them (each holds the model), or "-"."""
    usable = gib * 2**30 * (1 - MARGIN)
    for g in range(1, BATCH + 1):
        b = math.ceil(BATCH / g)
        if estimate(shape, method, TOKENS, b, b).peak <= usable:
            return str(g)
    return "-"


def main() -> None:
    print(f"| model | dtype | method | 1 x {TOKENS} | {BATCH} x {TOKENS} | floor ({BATCH} ex., 1 mask/forward) | "
          + " | ".join(f"GPUs {g} GB (DP)" for g in GPU_GIB) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(GPU_GIB))
    for name, (model_type, kw) in MODELS.items():
        config = AutoConfig.for_model(model_type, **kw)
        base = shape_of(config)
        for dtype in ("float32", "bfloat16"):
            shape = base.with_dtype(dtype)
            for method in METHODS:
                one = estimate(shape, method, TOKENS, 1, 1).peak
                full = estimate(shape, method, TOKENS, BATCH, BATCH).peak
                floor = estimate(shape, method, TOKENS, BATCH, BATCH, max_rows=BATCH).peak
                floor_text = format_bytes(floor) if method in ("exact", "curve") else ""
                print(f"| {name} | {dtype} | {method} | {format_bytes(one)} | {format_bytes(full)} | {floor_text} | "
                      + " | ".join(gpus(shape, method, g) for g in GPU_GIB) + " |")


if __name__ == "__main__":
    main()
