"""Retrain a trained zoo model with its recorded command and compare it with its card (training.json).

    python scripts/check_retrain.py induction-2l            # ~3 min on one thread
    python scripts/check_retrain.py greater-than-2l --tolerance 0.02

Weights are bit-identical only on the same kind of processor with the same torch/transformers
versions and thread count (CPU kernels differ between processors). What must reproduce anywhere
is the behaviour: every held-out accuracy in training.json within ``--tolerance`` (absolute).
Exits 1 and names the numbers that moved further.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ("induction-2l", "ioi-3l", "greater-than-2l")


def accuracies(record: dict, prefix: str = "") -> dict[str, float]:
    """Every number under a ``heldout*`` key whose path names an accuracy."""
    out: dict[str, float] = {}
    for key, value in record.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(accuracies(value, path + "."))
        elif isinstance(value, (int, float)) and path.startswith("heldout") and "accuracy" in path:
            out[path] = float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=TRAINED)
    ap.add_argument("--tolerance", type=float, default=0.02, help="largest accepted |Δ accuracy| (absolute)")
    args = ap.parse_args(argv)
    card = json.loads((ROOT / "circuits/zoo/models" / args.model / "training.json").read_text())
    cmd = shlex.split(card["command"])
    with tempfile.TemporaryDirectory() as tmp:
        cmd[cmd.index("--out") + 1] = tmp
        cmd[0] = sys.executable
        print("retraining:", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
        new = json.loads((Path(tmp) / "training.json").read_text())
    old_acc, new_acc = accuracies(card), accuracies(new)
    bad = []
    print(f"{'held-out accuracy':<48} {'card':>8} {'retrained':>10} {'|Δ|':>7}")
    for key in sorted(old_acc):
        d = abs(new_acc.get(key, float("nan")) - old_acc[key])
        ok = d <= args.tolerance
        bad += [] if ok else [key]
        print(f"{key:<48} {old_acc[key]:8.4f} {new_acc.get(key, float('nan')):10.4f} {d:7.4f}{'' if ok else '  <- moved'}")
    print(f"card machine: {card.get('machine', 'not recorded')}; this machine: {new.get('machine')}")
    if bad:
        print(f"{len(bad)} held-out accuracies moved by more than {args.tolerance}: {', '.join(bad)}")
        return 1
    print(f"every held-out accuracy within {args.tolerance} of the card")
    return 0


if __name__ == "__main__":
    sys.exit(main())
