"""Traced and patched forward vs the bare transformers forward.

Prints, from one run on the same batch: bare forward time, traced forward (all edges)
ratio (target <= 1.3x), patched forward with a random edge mask ratio (target <= 2x),
and peak-memory growth of the patched forward (must stay at the per-node activations:
senders x batch x positions x d_model, never edges x ...).

    python benchmarks/bench_forward.py            # GPT-2-small shape, batch 8 x 32
    python benchmarks/bench_forward.py --family mixtral   # a ~100M random config of that family
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import BENCH_FAMILIES, bare_forward, best_time, family_model, parser, peak_rss_mb, random_batch  # noqa: E402

from circuits import Patch, TracedModel  # noqa: E402


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--family", choices=BENCH_FAMILIES, default="gpt2",
                   help="model family of the random config (default gpt2: GPT-2 small; others ~100M parameters)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = family_model(args.family, args.quick)
    tm = TracedModel(model)
    b = random_batch(model.config.vocab_size, args.batch, args.tokens)
    g = tm.layout
    with torch.no_grad():
        corr = tm.run(b.corrupted, b.attention_mask, record=True).senders
    mask = (torch.rand(g.n_edges, generator=torch.Generator().manual_seed(0)) > 0.5).float()

    def traced():
        with torch.no_grad():
            return tm.run(b.clean, b.attention_mask).logits

    def patched():
        with torch.no_grad():
            return tm.run(b.clean, b.attention_mask, patch=Patch(mask, corr)).logits

    t_bare = best_time(bare_forward(model, b), args.repeats)
    rss0 = peak_rss_mb()
    t_traced = best_time(traced, args.repeats)
    t_patched = best_time(patched, args.repeats)
    rss1 = peak_rss_mb()
    S, d = g.n_senders, model.config.hidden_size
    node_mb = S * args.batch * args.tokens * d * 4 / 2**20
    edge_mb = g.n_edges * args.batch * args.tokens * d * 4 / 2**20
    family = "" if args.family == "gpt2" else f"{args.family} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M), "
    print(f"model: {family}{g.n_layers} layers x {g.n_heads} heads, d={d}; edges={g.n_edges}; "
          f"batch {args.batch} x {args.tokens}; threads={torch.get_num_threads()}")
    print(f"bare forward           {t_bare * 1e3:8.1f} ms")
    print(f"traced forward         {t_traced * 1e3:8.1f} ms   ratio {t_traced / t_bare:5.2f}x  (target <= 1.3x)")
    print(f"patched forward        {t_patched * 1e3:8.1f} ms   ratio {t_patched / t_bare:5.2f}x  (target <= 2.0x)")
    print(f"peak RSS growth during traced+patched: {rss1 - rss0:7.1f} MB; one per-node buffer "
          f"[S,B,P,d] = {node_mb:.1f} MB; a per-edge buffer would be {edge_mb:.0f} MB")


if __name__ == "__main__":
    main()
