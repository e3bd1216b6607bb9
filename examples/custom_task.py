"""Your own task from a CSV file: columns clean, corrupted, answer, wrong_answer.

Writes a small CSV for the stories260k model (or reads yours with --csv), discovers a circuit
with EAP and prints its faithfulness.

    python examples/custom_task.py                 # writes and uses my_task.csv
    python examples/custom_task.py --csv mine.csv --model path/to/model
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import circuits

ROWS = [  # clean, corrupted (same token length), answer, wrong answer
    ("Once upon a time, there was a little girl. Every day,", "Once upon a time, there was a little boy. Every day,", " she", " he"),
    ("Once upon a time, there was a little boy. Every day,", "Once upon a time, there was a little girl. Every day,", " he", " she"),
    ("There was a girl who liked to play. One day,", "There was a boy who liked to play. One day,", " she", " he"),
    ("There was a boy who liked to play. One day,", "There was a girl who liked to play. One day,", " he", " she"),
    ("The little girl had a red ball. Every morning,", "The little boy had a red ball. Every morning,", " she", " he"),
    ("The little boy had a red ball. Every morning,", "The little girl had a red ball. Every morning,", " he", " she"),
]


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--csv", default=None, help="your task file; default: write my_task.csv here")
    p.add_argument("--model", default="stories260k")
    p.add_argument("--edges", type=int, default=30)
    p.add_argument("--out", default="custom-out")
    args = p.parse_args(argv)
    path = Path(args.csv) if args.csv else Path(args.out) / "my_task.csv"
    if args.csv is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["clean", "corrupted", "answer", "wrong_answer"])
            w.writerows(ROWS)
    model, tokenizer = circuits.zoo.load(args.model)
    task = circuits.load_task(str(path), tokenizer)  # validated: lengths, single-token answers
    graph = circuits.attribute(model, task, method="eap")
    graph = circuits.prune.topn(graph, args.edges)
    report = circuits.evaluate_circuit(model, graph, task)
    print(f"{len(task)} examples from {path}: {graph.n_circuit_edges} edges, faithfulness {report.faithfulness:.3f}")
    return report.faithfulness


if __name__ == "__main__":
    main()
