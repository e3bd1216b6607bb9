"""Exact patching throughput and ACDC wall time.

Prints, from one run: exact single-edge effects per second for a uniform sample of edges
(batched: many masks per forward, each resuming at its receiver's layer), the same for one
dedicated patched forward per edge, and the bare model's forwards per second on the same
batch; the batched/one-per-edge speed-up (target >= 10x); the floor of the method by matmul
count (how much of a bare forward an exact single-edge effect needs at least); then ACDC on a
2-layer model with a few hundred edges (target: under a minute).

    python benchmarks/bench_patching.py                 # GPT-2-small shape, batch 8 x 32
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config

sys.path.insert(0, str(Path(__file__).parent))
from common import bare_forward, best_time, gpt2_small, parser, random_batch  # noqa: E402

from circuits import Patch, TracedModel  # noqa: E402
from circuits.patching import PatchRunner, acdc, exact_edge_effects  # noqa: E402


def matmul_share_per_edge(tm: TracedModel, edges: torch.Tensor, P: int) -> float:
    """Multiply-adds of the sparse single-edge method per edge, as a share of a bare forward's.

    Counts the matmuls only (per token; attention scores and elementwise work ignored):
    bare = L (4 d^2 + 2 d d_mlp) + d V. An edge into layer l < L recomputes its node (one head's
    projection and output, 2 d dh, plus the layer's MLP for a head in a sequential block; or
    the MLP), then runs layers l+1 .. L-2 in full and the last layer's keys and values at every
    position (2 d^2), its queries, output and MLP at the answer position only, and the
    unembedding there. This is the floor of the method, whatever the implementation.
    """
    a, g = tm.adapter, tm.layout
    L, d = g.n_layers, a.d_model
    dh = a.head_dim
    dm = tm.model.config.n_inner or 4 * d
    V = tm.model.config.vocab_size
    layer_full = 4 * d * d + 2 * d * dm
    answer_only = (layer_full - 2 * d * d + d * V) / P  # per token of the batch
    bare = L * layer_full + d * V
    r = g.edge_receiver[edges]
    layer = g.edge_layer(edges)
    is_mlp = torch.isin(r, torch.tensor([g.mlp_receiver(lay) for lay in range(L)]))
    node = torch.where(is_mlp, torch.tensor(2.0 * d * dm), torch.tensor(2.0 * d * dh + (0 if g.parallel_attn_mlp else 2 * d * dm)))
    after = (L - 2 - layer).clamp(min=0) * layer_full + torch.where(layer < L - 1, 2 * d * d, 0)
    cost = torch.where(layer < L, node + after, torch.tensor(0.0)) + answer_only
    return float(cost.float().mean() / bare)


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
    g = tm.layout
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
                keep = torch.ones(g.n_edges)
                keep[e] = 0.0
                tm.run(b.clean, b.attention_mask, patch=Patch(keep, zc))

    t_single = best_time(one_per_edge, 1) / len(one)
    print(f"bare forward                 {1 / t_bare:8.2f} /s   ({t_bare * 1e3:.1f} ms)")
    print(f"one patched forward per edge {1 / t_single:8.2f} edges/s")
    print(f"batched exact effects        {1 / t_batched:8.2f} edges/s   ({len(edges)} edges sampled)")
    print(f"speed-up batched vs one forward per edge: {t_single / t_batched:5.1f}x (target >= 10x); "
          f"vs bare forwards: {t_bare / t_batched:5.1f}x")
    print(f"all {g.n_edges} edges would take about {g.n_edges * t_batched:.0f} s")
    share = matmul_share_per_edge(tm, edges, args.tokens)
    print(f"floor of the method (matmul count): {share:.3f} bare forwards per edge, i.e. at most "
          f"{1 / share:4.1f}x vs bare forwards; measured {t_batched / t_bare:.3f} bare forwards per edge")

    # ACDC on a 2-layer model with a few hundred edges
    torch.manual_seed(0)
    small = AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_head=8, n_embd=128, vocab_size=512)).eval()
    stm = TracedModel(small)
    sb = random_batch(512, 16, 16, seed=1)
    t0 = time.perf_counter()
    res = acdc(stm, [sb], threshold=1e-4)
    print(f"ACDC 2 layers x 8 heads ({stm.layout.n_edges} edges, 16 x 16 tokens): {time.perf_counter() - t0:.1f} s, "
          f"{res.n_forward_batches} batched forwards, {res.graph.n_circuit_edges} edges kept (target: < 60 s)")


if __name__ == "__main__":
    main()
