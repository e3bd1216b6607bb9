"""Cost of a full MIB faithfulness curve vs one bare forward pass (targets: <= 12x end to end;
<= 6x for the curve from recorded clean and corrupted runs, with the sparse masked forward).

Set-up: GPT-2-small shape, random init (or a tiny config with --quick), batch 8 x 32 random
tokens, logit difference on random answer ids; edge scores from EAP. The curve evaluates the
10 MIB fractions plus the full and the empty graph on one PatchRunner: clean and corrupted
runs, 10 top-n + pruning selections, and the batched patched forward(s).

Prints from one run: the bare forward time (best of --repeats after a warm-up); the curve end to
end on its first (cold) call; a warm curve (best of --repeats) split into clean + corrupted runs,
selection and patched evaluation; ratios to the bare forward; peak RSS. Then the sparse masked
forward (circuits/runtime/sparse.py) against the general one on the same runner's recorded runs:
the curve's masks (target <= 6x), one circuit of 1 % of the edges (target <= 0.3x) and a floor under
any exact evaluation of it (the arithmetic of the MLPs and heads it changes and of the answer logits, timed
alone), and a table of
the cost of each curve mask against the number of nodes it makes CHANGED. In that part every ratio
divides by a bare forward timed in the same rounds (the machine's speed drifts over minutes).

    python benchmarks/bench_curve.py [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import bare_forward, best_time, interleaved_best, parser, peak_rss_mb, setup  # noqa: E402

from circuits.evaluation import MIB_FRACTIONS, curve_masks, faithfulness_curve  # noqa: E402
from circuits.metrics import answer_columns, get_metric  # noqa: E402
from circuits.patching import PatchRunner  # noqa: E402
from circuits.runtime.node_states import CHANGED, plan_states  # noqa: E402
from circuits.scores import attribute  # noqa: E402


def n_patched_masks(g, absolute: bool) -> int:
    """Distinct masks that need a patched forward: the circuits and the empty graph, minus the full graph."""
    E = g.n_edges
    masks = torch.cat([torch.zeros(1, E), curve_masks(g, MIB_FRACTIONS, absolute)[0].float()])
    uniq = torch.unique(masks, dim=0)
    return int((~(uniq == 1).all(1)).sum())


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--absolute", action="store_true", help="rank by |score| (CMD curve) instead of signed (CPR)")
    p.set_defaults(repeats=1)
    args = p.parse_args()
    model, tm, b = setup(args, extra=f"; fractions={len(MIB_FRACTIONS)}")
    t_bare = best_time(bare_forward(model, b), args.repeats)
    print(f"bare forward                   {t_bare * 1e3:9.1f} ms")
    rss_before = peak_rss_mb()
    g = attribute(tm, [b], "logit_diff", "eap")
    print(f"EAP scores                     {g.provenance.scoring.seconds * 1e3:9.1f} ms (not part of the curve)")
    rss_eap = peak_rss_mb()

    t = time.perf_counter()
    curve = faithfulness_curve(tm, g, [b], metric="logit_diff", absolute=args.absolute, batch_size=args.batch)
    t_cold = time.perf_counter() - t
    print(f"MIB curve, end to end (cold)   {t_cold * 1e3:9.1f} ms   ratio {t_cold / t_bare:6.2f}x")

    # warm run, timed by part: prepare (clean + corrupted runs), selection, patched evaluation
    best = None
    for _ in range(args.repeats):
        t = time.perf_counter()
        runner = PatchRunner(tm, [b], "logit_diff", batch_size=args.batch)
        t_prep = time.perf_counter() - t
        t = time.perf_counter()
        curve_masks(g, MIB_FRACTIONS, args.absolute)
        t_sel = time.perf_counter() - t
        t = time.perf_counter()
        faithfulness_curve(tm, g, [b], absolute=args.absolute, runner=runner)
        t_eval = time.perf_counter() - t - t_sel  # the curve call repeats the selection
        parts = (t_prep + t_sel + t_eval, t_prep, t_sel, t_eval)
        best = parts if best is None or parts[0] < best[0] else best
    total, t_prep, t_sel, t_eval = best
    rss_after = peak_rss_mb()
    print(f"MIB curve (warm, best of {args.repeats})     {total * 1e3:9.1f} ms   ratio {total / t_bare:6.2f}x (target <= 12x)")
    print(f"  clean + corrupted runs       {t_prep * 1e3:9.1f} ms   {t_prep / t_bare:6.2f}x")
    print(f"  selection (10 topn + prune)  {t_sel * 1e3:9.1f} ms   {t_sel / t_bare:6.2f}x")
    print(f"  patched evaluation           {t_eval * 1e3:9.1f} ms   {t_eval / t_bare:6.2f}x "
          f"({n_patched_masks(g, args.absolute)} distinct masks x {args.batch} rows; the all-edges mask reuses the clean run)")
    print(f"peak RSS (process high-water mark): {rss_before:.0f} MB before scoring, {rss_eap:.0f} MB after EAP, "
          f"{rss_after:.0f} MB after the curves")
    print(f"curve ({curve.kind}): n_edges={curve.n_edges}")
    print(f"  f={[round(f, 3) for f in curve.faithfulness]}  CPR={curve.cpr:.4f}  CMD={curve.cmd:.4f}")
    sparse_report(tm, g, b, args, bare_forward(model, b))


def sparse_report(tm, g, b, args, bare) -> None:
    """Sparse vs general masked forward on one runner's recorded clean and corrupted runs; every ratio's
    bare forward (``bare``) is timed in the same rounds as what it divides (interleaved_best)."""
    E = g.n_edges
    sparse = PatchRunner(tm, [b], "logit_diff", batch_size=args.batch)
    general = PatchRunner(tm, [b], "logit_diff", batch_size=args.batch, sparse=False)
    circuits = curve_masks(g, MIB_FRACTIONS, args.absolute)[0].float()
    masks = torch.cat([torch.ones(1, E), torch.zeros(1, E), circuits])
    one = curve_masks(g, [0.01], args.absolute)[0].float()
    print(f"sparse masked forward ({'on' if sparse.sparse else 'not available: general path'}), "
          "from the recorded clean and corrupted runs, best of --repeats:")

    def timed(m: torch.Tensor) -> tuple[float, float, float]:
        """Sparse and general evaluation of ``m`` and the bare forward, timed in the same rounds."""
        t = interleaved_best({"bare": bare, "sparse": lambda: sparse.evaluate(m), "general": lambda: general.evaluate(m)},
                             args.repeats)
        return t["sparse"], t["general"], t["bare"]

    for name, m, target in (("MIB curve (10 fractions)", masks, "<= 6x"),
                            (f"one circuit of 1 % ({int(one.sum())} edges)", one, "<= 0.3x")):
        t_s, t_g, t_bare = timed(m)
        print(f"  {name:34s} sparse {t_s * 1e3:8.1f} ms {t_s / t_bare:6.2f}x (target {target});  "
              f"general {t_g * 1e3:8.1f} ms {t_g / t_bare:6.2f}x;  bare {t_bare * 1e3:8.1f} ms")
    circuit_floor(tm, g, b, one, bare, args.repeats)
    changed = plan_states(g.layout, circuits).changed_nodes().tolist()
    n_nodes = g.layout.n_senders  # heads, MLPs and input (+ logits)
    print(f"  cost per mask vs CHANGED nodes (of {n_nodes} + logits), one mask per evaluate call:")
    print("    fraction  edges  changed   sparse ms  ratio   general ms  ratio")
    for f, m, c in zip(MIB_FRACTIONS, circuits, changed):
        t_s, t_g, t_bare = timed(m)
        print(f"    {f:8.3f} {int(m.sum()):6d} {c:8d}   {t_s * 1e3:9.1f} {t_s / t_bare:6.2f}x "
              f"{t_g * 1e3:10.1f} {t_g / t_bare:6.2f}x")
    st = sparse.sparse_stats
    print(f"  sparse path computed {st.computed_share():.1%} of the heads and MLPs a dense forward computes "
          f"({st.masks} masks evaluated)")


def circuit_floor(tm, g, b, keep: torch.Tensor, bare, repeats: int) -> None:
    """A floor under any exact evaluation of the circuit ``keep`` from the recorded runs: the arithmetic of the
    nodes it changes, timed alone on random inputs of their shapes against a bare forward timed in the same
    rounds (input assembly, gathers and bookkeeping left out). Printed in two parts:

    * the MLPs it changes (at every position where a computed key, value or such an MLP reads them, else at
      the answer positions) and the answer logits the metric reads;
    * the heads it changes: a norm and a q, k or v projection per CHANGED receiver (queries of heads read at
      the answer positions only there), attention, and ``W_O``, at the positions the sparse forward needs.
    """
    lay = g.layout
    plan = plan_states(lay, keep.reshape(1, -1))
    layers = range(lay.n_layers)
    full = [lyr for lyr in layers if bool(plan.full[0, lay.mlp_sender(lyr)])]
    at = [lyr for lyr in layers if bool(plan.live[0, lay.mlp_sender(lyr)]) and lyr not in full]
    (B, P), d, H = b.clean.shape, tm.adapter.d_model, lay.n_heads
    dh = d // H
    x, x_at = torch.randn(B, P, d), torch.randn(B, 1, d)
    columns = answer_columns([get_metric("logit_diff")], b)
    heads = []  # per layer: (receivers projected at every position, queries at the answer only, heads, heads at answer)
    for lyr in layers:
        s0, _ = lay.head_senders(lyr)
        r0, r1 = lay.attn_receivers(lyr)
        live, whole = plan.live[0, s0:s0 + H], plan.full[0, s0:s0 + H]
        rs = (plan.receivers[0, r0:r1].view(H, 3) == CHANGED) & live[:, None]  # [H, 3] computed q, k, v
        n_every = int(rs[whole].sum() + rs[~whole, 1:].sum())
        heads.append((n_every, int(rs[~whole, 0].sum()), int((live & whole).sum()), int((live & ~whole).sum())))
    n_most = max(max(h) for h in heads) or 1
    w_in, w_out = torch.randn(n_most, d, dh), torch.randn(n_most, dh, d)
    xr, xr_at = torch.randn(n_most, B * P, d), torch.randn(n_most, B, d)
    qkv, q_at = torch.randn(B, n_most, P, dh), torch.randn(B, n_most, 1, dh)

    def mlps() -> None:
        with torch.no_grad():
            for lyr in full:
                tm.blocks[lyr].mlp(x)
            for lyr in at:
                tm.blocks[lyr].mlp(x_at)
            tm.adapter.unembed(x_at, columns)  # the logits the metric reads (logit_diff: the answer tokens')

    def head_work() -> None:
        for n_every, n_q_at, n_full, n_at in heads:
            for n, inp in ((n_every, xr), (n_q_at, xr_at)):
                if n:
                    torch.bmm(F.layer_norm(inp[:n], (d,)), w_in[:n])
            if n_full:
                ctx = F.scaled_dot_product_attention(qkv[:, :n_full], qkv[:, :n_full], qkv[:, :n_full], is_causal=True)
                torch.einsum("bnpe,ned->bpnd", ctx, w_out[:n_full])
            if n_at:
                ctx = F.scaled_dot_product_attention(q_at[:, :n_at], qkv[:, :n_at], qkv[:, :n_at])
                torch.einsum("bne,ned->nbd", ctx[:, :, 0], w_out[:n_at])

    t = interleaved_best({"bare": bare, "mlps": mlps, "heads": head_work}, repeats)
    n_heads = sum(h[2] + h[3] for h in heads)
    print(f"  floor for that circuit (its arithmetic alone, bare {t['bare'] * 1e3:.1f} ms in the same rounds):")
    print(f"    its {len(full)} MLPs needed at every position, {len(at)} at the answer positions only and the answer "
          f"logits the metric reads: {t['mlps'] * 1e3:8.1f} ms {t['mlps'] / t['bare']:6.2f}x")
    print(f"    its {n_heads} heads' norms and projections ({sum(h[0] + h[1] for h in heads)} q/k/v receivers), "
          f"attention and W_O: {t['heads'] * 1e3:8.1f} ms {t['heads'] / t['bare']:6.2f}x")
    total = t["mlps"] + t["heads"]
    print(f"    together: {total * 1e3:8.1f} ms {total / t['bare']:6.2f}x")


if __name__ == "__main__":
    main()
