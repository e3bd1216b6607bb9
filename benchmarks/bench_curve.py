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
any exact evaluation of it (the MLPs it changes and the answer logits, timed alone), and a table of
the cost of each curve mask against the number of nodes it makes CHANGED. In that part every ratio
divides by a bare forward timed in the same rounds (the machine's speed drifts over minutes).

    python benchmarks/bench_curve.py [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import bare_forward, best_time, interleaved_best, parser, peak_rss_mb, setup  # noqa: E402

from circuits.evaluation import MIB_FRACTIONS, curve_masks, faithfulness_curve  # noqa: E402
from circuits.metrics import answer_columns, get_metric  # noqa: E402
from circuits.patching import PatchRunner  # noqa: E402
from circuits.runtime.node_states import plan_states  # noqa: E402
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
    mlp_floor(tm, g, b, one, bare, args.repeats)
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


def mlp_floor(tm, g, b, keep: torch.Tensor, bare, repeats: int) -> None:
    """A floor under any exact evaluation of the circuit ``keep`` from the recorded runs: the MLPs it changes
    (at every position where a computed key, value or such an MLP reads them, else at the answer positions)
    and the answer-position logits the metric reads, timed alone on inputs of their shapes (heads, input assembly and
    everything else left out), against a bare forward timed in the same rounds."""
    lay = g.layout
    plan = plan_states(lay, keep.reshape(1, -1))
    layers = range(lay.n_layers)
    full = [lyr for lyr in layers if bool(plan.full[0, lay.mlp_sender(lyr)])]
    at = [lyr for lyr in layers if bool(plan.live[0, lay.mlp_sender(lyr)]) and lyr not in full]
    d = tm.adapter.d_model
    x, x_at = torch.randn(*b.clean.shape, d), torch.randn(b.clean.shape[0], 1, d)
    columns = answer_columns([get_metric("logit_diff")], b)

    def floor() -> None:
        with torch.no_grad():
            for lyr in full:
                tm.blocks[lyr].mlp(x)
            for lyr in at:
                tm.blocks[lyr].mlp(x_at)
            tm.adapter.unembed(x_at, columns)  # the logits the metric reads (logit_diff: the answer tokens')

    t = interleaved_best({"bare": bare, "floor": floor}, repeats)
    print(f"  floor for that circuit: its {len(full)} MLPs needed at every position, {len(at)} at the answer "
          f"positions only and the answer logits the metric reads, alone: {t['floor'] * 1e3:8.1f} ms {t['floor'] / t['bare']:6.2f}x "
          f"(bare {t['bare'] * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
