"""Path patching heatmap: the effect of every head's direct path into chosen receivers.

    python examples/path_patching.py --receivers 'a4.h2<q>' 'a4.h2<k>' --out heatmap.png
"""

from __future__ import annotations

import argparse

import circuits
from circuits.render import plot_heatmap


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="stories260k")
    p.add_argument("--task", default="pronoun")
    p.add_argument("--receivers", nargs="+", default=["logits"])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--out", default="path_patching.png")
    args = p.parse_args(argv)
    model, tokenizer = circuits.zoo.load(args.model)
    task = circuits.load_task(args.task, tokenizer, n=args.n, seed=0)
    grid = circuits.path_patching_grid(model, task, args.receivers, normalize=True)
    plot_heatmap(grid, args.out, f"heads -> {', '.join(args.receivers)}: share of m(clean) - m(corrupted)")
    best = grid.nan_to_num(0).abs().flatten().argmax().item()
    L, H = divmod(best, grid.shape[1])
    print(f"strongest direct path: a{L}.h{H} -> {args.receivers} ({grid[L, H].item():+.3f} of the clean-corrupted gap); wrote {args.out}")
    return grid


if __name__ == "__main__":
    main()
