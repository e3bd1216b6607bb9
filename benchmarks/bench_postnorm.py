"""Cost of post-norm edge semantics: Gemma-2 / OLMo-2 against a Llama of the same shape.

    python benchmarks/bench_postnorm.py                       # 6 layers x 8 heads, d 256, B 8, P 24
    python benchmarks/bench_postnorm.py --layers 12 --heads 8 --d 512 --repeat 5

Random-init models (seed --seed), float32, CPU. For each family, the median wall time of:
a clean forward; a patched forward with K=8 masks that each remove 5 % of the edges (mixed
receivers: the post-norm worst case); the same with K=8 masks that keep or remove whole receivers
(shared norms); one EAP pass (2 forwards + 1 backward); exact single-edge effects of 64 edges.
The post-norm families skip the additive fast paths (docs/concepts.md, "Post-norm families");
this prints how much that costs here. Prints the load average before and after.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, Olmo2Config

from circuits import Patch, TracedModel
from circuits.patching import PatchRunner, exact_edge_effects
from circuits.scores import attribute
from circuits.tasks.base import Batch


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def config(family: str, L: int, H: int, d: int):
    shape = dict(vocab_size=512, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=L, num_attention_heads=H,
                 num_key_value_heads=max(1, H // 2), max_position_embeddings=256)
    if family == "gemma2":
        return Gemma2Config(**shape, head_dim=d // H, sliding_window=16, query_pre_attn_scalar=d // H)
    if family == "olmo2":
        return Olmo2Config(**shape, pad_token_id=1, bos_token_id=2, eos_token_id=3)
    return LlamaConfig(**shape)


def timed(fn, repeat: int) -> float:
    fn()  # warm-up: lazy imports and first-call allocations are not timed
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def family_row(family: str, args: argparse.Namespace, batch: Batch, g: torch.Generator) -> list[float]:
    """Median seconds of the five measurements for one family."""
    torch.manual_seed(args.seed)
    tm = TracedModel(AutoModelForCausalLM.from_config(config(family, args.layers, args.heads, args.d)).eval())
    lay, clean = tm.layout, batch.clean
    with torch.no_grad():
        zc = tm.run(batch.corrupted, record=True).senders
    mixed = (torch.rand(8, lay.n_edges, generator=g) > 0.05).float()
    whole = (torch.rand(8, lay.n_receivers, generator=g) > 0.3).float()[:, lay.edge_receiver]
    runner = PatchRunner(tm, [batch], "logit_diff")
    edges = torch.randperm(lay.n_edges, generator=g)[:64]
    with torch.no_grad():
        row = [timed(lambda: tm.run(clean), args.repeat),
               timed(lambda: tm.run(clean, patch=Patch(mixed, zc)), args.repeat),
               timed(lambda: tm.run(clean, patch=Patch(whole, zc)), args.repeat)]
    row.append(timed(lambda: attribute(tm, [batch], "logit_diff", "eap"), args.repeat))
    row.append(timed(lambda: exact_edge_effects(tm, [batch], edges=edges, runner=runner), args.repeat))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--positions", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"load average before: {load_average()}")
    g = torch.Generator().manual_seed(args.seed)
    B, P = args.batch, args.positions
    clean, corr = torch.randint(4, 512, (2, B, P), generator=g)
    batch = Batch(clean, corr, torch.ones(B, P, dtype=torch.long), torch.randint(4, 512, (B, 1), generator=g),
                  torch.randint(4, 512, (B, 1), generator=g), torch.full((B,), P - 1))
    print(f"{'family':<8} {'forward':>9} {'mixed K=8':>10} {'whole K=8':>10} {'EAP':>9} {'64 exact':>9}  (seconds)")
    for family in ("llama", "gemma2", "olmo2"):
        print(f"{family:<8} " + " ".join(f"{t:>9.3f}" for t in family_row(family, args, batch, g)))
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
