"""Cost of one edge-pruning optimisation step vs a bare forward+backward pass.

Prints, from one run on the same batch (GPT-2-small shape: 12 layers x 12 heads, d 768, random
init, batch 8 x 32 by default):
- the bare model's forward+backward time (parameter gradients included: the floor bench_attribution uses);
- the time of one edge-pruning step, measured as ``(t(1 + S steps) - t(1 step)) / S`` so the
  one-off preparation (the clean and corrupted runs) cancels out, and its ratio to the bare
  forward+backward (issue #16's target: <= 3x).

Peak memory against EAP's (target <= 2x) is measured in fresh processes by bench_memory.py:
``python benchmarks/bench_memory.py --shapes gpt2-small --methods eap edge-pruning --batch 8 --tokens 32``.

    python benchmarks/bench_edge_pruning.py                 # GPT-2-small shape, 2 threads
    python benchmarks/bench_edge_pruning.py --quick         # tiny 2-layer model (smoke test)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import bare_forward_backward, best_time, parser, setup  # noqa: E402

from circuits.scores import edge_pruning  # noqa: E402


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="S: extra optimisation steps timed (default 5)")
    args = p.parse_args()
    model, tm, b = setup(args)
    E = tm.layout.n_edges
    target = max(1, E // 20)

    def prune(steps: int):
        return lambda: edge_pruning(tm, [b], "logit_diff", target_edges=target, steps=steps, early_stop=False,
                                    batch_size=args.batch, seed=0)

    t_bare = best_time(bare_forward_backward(model, b), args.repeats)
    t_one = best_time(prune(1), args.repeats)
    t_more = best_time(prune(1 + args.steps), args.repeats)
    t_step = (t_more - t_one) / args.steps
    print(f"bare forward+backward        {t_bare * 1e3:8.1f} ms")
    print(f"edge pruning, 1 step (+prep) {t_one * 1e3:8.1f} ms")
    print(f"edge pruning, one step       {t_step * 1e3:8.1f} ms   ratio to bare {t_step / t_bare:5.2f}x (target <= 3)")


if __name__ == "__main__":
    main()
