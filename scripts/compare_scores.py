"""Scores of every method on one model and data set, saved or compared: a check that a change to
the engine left the scores alone.

    python scripts/compare_scores.py --save before.pt      # in the old checkout
    python scripts/compare_scores.py --save after.pt       # in the new one
    python scripts/compare_scores.py --compare before.pt after.pt

stories260k / pronoun, 48 examples (seed 0), 3 IG steps, one thread.
"""

from __future__ import annotations

import argparse

import torch

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "eap-ig-edges")


def scores() -> dict[str, torch.Tensor]:
    import circuits

    torch.set_num_threads(1)
    model, tok = circuits.zoo.load("stories260k")
    task = circuits.load_task("pronoun", tok, n=48, seed=0)
    out = {m: circuits.attribute(model, task, method=m, steps=3).scores.clone() for m in METHODS}
    out["exact"] = circuits.exact_edge_effects(model, task)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save", metavar="FILE")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = ap.parse_args(argv)
    if args.save:
        torch.save(scores(), args.save)
    if args.compare:
        a, b = (torch.load(f) for f in args.compare)
        for k in a:
            d = (a[k] - b[k]).abs().max().item()
            print(f"{k:20s} max|A-B| {d:.3e}  score scale {a[k].abs().max().item():.3e}  identical={torch.equal(a[k], b[k])}")


if __name__ == "__main__":
    main()
