"""Compare discovery methods on a model whose circuit is known by construction.

For each method: edge-level ROC AUC against the planted circuit, and the normalized
faithfulness of its top-k circuit where k is the true circuit's size.

    python examples/compare_methods.py --model marker_copy
    python examples/compare_methods.py --model rope_induction --n 32
"""

from __future__ import annotations

import argparse

import circuits
from circuits.zoo.planted import ground_truth, load_planted, planted_task

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "eap-ig-edges")


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="marker_copy", choices=("marker_copy", "rope_induction"))
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--acdc-tau", type=float, default=0.1)
    args = p.parse_args(argv)
    model, _ = load_planted(args.model)
    task = planted_task(args.model, n=args.n, seed=0)
    truth = ground_truth(args.model)
    k = truth.n_circuit_edges
    results: dict[str, tuple[float, float]] = {}
    for method in METHODS:
        graph = circuits.attribute(model, task, method=method, steps=5)
        auc = circuits.roc(graph, truth.in_circuit).auc
        graph = circuits.prune.topn(graph, k)
        results[method] = (auc, circuits.evaluate_circuit(model, graph, task).faithfulness)
    acdc = circuits.acdc(model, task, args.acdc_tau, metric="kl_div")
    auc = circuits.roc(acdc.graph, truth.in_circuit).auc
    results[f"acdc (tau={args.acdc_tau})"] = (auc, circuits.evaluate_circuit(model, acdc.graph, task).faithfulness)
    print(f"{args.model}: true circuit {k} edges of {truth.n_edges}")
    print(f"{'method':<24} {'edge AUC':>9} {'f(top-k)':>9}")
    for name, (a, f) in results.items():
        print(f"{name:<24} {a:9.3f} {f:9.3f}")
    return results


if __name__ == "__main__":
    main()
