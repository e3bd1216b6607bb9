"""Attribution cost vs a bare forward+backward pass.

Prints, from one run on the same batch (GPT-2-small shape, batch 8 x 32 by default):
the bare model's forward+backward time; EAP's time and ratio (target <= 2.0x the bare
fwd+bwd, i.e. the 1.6x of fwd+bwd plus one forward for the corrupted run);
EAP-IG-inputs (m = 5) and its ratio to m x bare fwd+bwd (target <= 1.3); peak RSS growth.

    python benchmarks/bench_attribution.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import bare_forward_backward, best_time, parser, peak_rss_mb, setup  # noqa: E402

from circuits.scores import attribute  # noqa: E402


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--methods", default="eap,eap-ig-inputs,clean-corrupted")
    args = p.parse_args()
    model, tm, b = setup(args)
    t_bare = best_time(bare_forward_backward(model, b), args.repeats)
    print(f"bare forward+backward      {t_bare * 1e3:8.1f} ms")
    for method in args.methods.split(","):
        rss0 = peak_rss_mb()
        t = best_time(lambda method=method: attribute(tm, [b], "logit_diff", method, steps=args.steps), args.repeats)
        rss = peak_rss_mb() - rss0
        ig = method in ("eap-ig-inputs", "eap-ig-edges")
        passes = args.steps if ig else (2 if method == "clean-corrupted" else 1)
        target = {"eap": "<= 2.0", "eap-ig-inputs": "<= 1.3", "clean-corrupted": "-"}.get(method, "-")
        print(f"{method:<22} {t * 1e3:8.1f} ms   ratio to bare {t / t_bare:5.2f}x   "
              f"per gradient pass {t / (passes * t_bare):5.2f}x (target {target})   peak RSS +{rss:.0f} MB")


if __name__ == "__main__":
    main()
