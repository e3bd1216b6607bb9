"""Exact patching throughput and ACDC wall time (issue 5 targets).

Prints, from one run: exact single-edge effects per second for a uniform sample of edges
(batched: many masks per forward, each resuming at its receiver's layer), the same for one
dedicated patched forward per edge, and the bare model's forwards per second on the same
batch; the batched/one-per-edge speed-up (target >= 10x); then ACDC on a 2-layer model with a
few hundred edges (target: under a minute).

    python benchmarks/bench_patching.py                 # GPT-2-small shape, batch 8 x 32
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, bare_forward, gpt2_small, parser, random_batch  # noqa: E402

from circuits import TracedModel  # noqa: E402
from circuits.patching import PatchRunner, acdc, exact_edge_effects  # noqa: E402


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--edges", type=int, default=384, help="edges sampled for the batched measurement")
    p.add_argument("--single", type=int, default=6, help="edges timed one forward each")
    p.add_argument("--max-rows", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = gpt2_small(args.quick)
    tm = TracedModel(model)
    b = random_batch(model.config.vocab_size, args.batch, args.tokens)
    g = tm.graph
    edges = torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(0))[: args.edges]
    runner = PatchRunner(tm, [b], "logit_diff", max_rows=args.max_rows)
    print(f"model: {model.config.n_layer} layers x {model.config.n_head} heads; edges={g.n_edges}; "
          f"batch {args.batch} x {args.tokens}; threads={torch.get_num_threads()}")
    t_bare = best_time(bare_forward(model, b), args.repeats)
    t0 = time.perf_counter()
    exact_edge_effects(tm, [b], edges=edges, runner=runner)
    t_batched = (time.perf_counter() - t0) / len(edges)

    zc = runner.prepared[0].reference
    one = edges[: args.single]

    def one_per_edge():
        with torch.no_grad():
            for e in one.tolist():
                w = torch.zeros(g.n_edges)
                w[e] = 1.0
                tm.run(b.clean, b.attention_mask, corrupted=zc, patch=w)

    t_single = best_time(one_per_edge, 1) / len(one)
    print(f"bare forward                 {1 / t_bare:8.2f} /s   ({t_bare * 1e3:.1f} ms)")
    print(f"one patched forward per edge {1 / t_single:8.2f} edges/s")
    print(f"batched exact effects        {1 / t_batched:8.2f} edges/s   ({len(edges)} edges sampled)")
    print(f"speed-up batched vs one forward per edge: {t_single / t_batched:5.1f}x (target >= 10x); "
          f"vs bare forwards: {t_bare / t_batched:5.1f}x")
    print(f"all {g.n_edges} edges would take about {g.n_edges * t_batched:.0f} s")

    # ACDC on a 2-layer model with a few hundred edges
    torch.manual_seed(0)
    small = AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_head=8, n_embd=128, vocab_size=512)).eval()
    stm = TracedModel(small)
    sb = random_batch(512, 16, 16, seed=1)
    t0 = time.perf_counter()
    res = acdc(stm, [sb], threshold=1e-4)
    print(f"ACDC 2 layers x 8 heads ({stm.graph.n_edges} edges, 16 x 16 tokens): {time.perf_counter() - t0:.1f} s, "
          f"{res.n_forward_batches} batched forwards, {res.graph.n_circuit_edges} edges kept (target: < 60 s)")


if __name__ == "__main__":
    main()
