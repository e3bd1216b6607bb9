"""The default demo: find the story-pronoun circuit in the pretrained stories260k model.

    python examples/demo.py --out demo-out            # 200 examples
    python examples/demo.py --out demo-out --n 24     # quick
"""

from __future__ import annotations

import argparse

import circuits


def main(argv: list[str] | None = None) -> circuits.CircuitReport:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="demo-out")
    p.add_argument("--n", type=int, default=200, help="examples (half for discovery, half for evaluation)")
    p.add_argument("--edges", type=int, default=50)
    args = p.parse_args(argv)

    model, tokenizer = circuits.zoo.load("stories260k")
    task = circuits.load_task("pronoun", tokenizer, n=args.n, seed=0)
    train, test = task.split(0.5, seed=0)
    graph = circuits.attribute(model, train, method="eap-ig-inputs", steps=5)
    graph = circuits.prune.topn(graph, args.edges)
    report = circuits.evaluate_circuit(model, graph, test)
    graph = graph.with_provenance(model="stories260k", task="pronoun", faithfulness=report.faithfulness)
    circuits.save(graph, f"{args.out}/circuit.json", overwrite=True)
    try:
        circuits.save(graph, f"{args.out}/circuit.svg", overwrite=True)
    except RuntimeError as e:  # Graphviz not installed
        print(e)
    print(f"{graph.n_circuit_edges} edges, normalized faithfulness {report.faithfulness:.3f}")
    return report


if __name__ == "__main__":
    main()
