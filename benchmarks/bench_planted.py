"""Discovery accuracy on the zoo's models with a known circuit.

For each planted model and method: edge-level and node-level ROC AUC against the ground
truth (|score| ranking; ACDC ranked by the badness increase it recorded per edge), and the
normalized faithfulness of the top-k circuit, k = the true circuit's size (ACDC: its own
circuit at the given τ).

    python benchmarks/bench_planted.py
"""

from __future__ import annotations

import argparse
import time

import torch

import circuits
from circuits.zoo.planted import PLANTED, ground_truth, load_planted, planted_task

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "eap-ig-edges")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"examples={args.n}, IG steps={args.steps}, ACDC tau={args.tau} (KL), ablation: patching")
    for name in sorted(PLANTED):
        model, _ = load_planted(name)
        task = planted_task(name, n=args.n, seed=0)
        truth = ground_truth(name)
        k = truth.n_circuit_edges
        truth_nodes = [n for n in truth.circuit_nodes() if n not in ("input", "logits")]
        print(f"\n{name}: {truth.n_edges} edges, true circuit {k} edges / nodes {truth_nodes}")
        print(f"  {'method':<22} {'edge AUC':>9} {'node AUC':>9} {'f(top-k)':>9} {'seconds':>8}")
        for method in METHODS + ("acdc",):
            t = time.perf_counter()
            if method == "acdc":
                graph = circuits.acdc(model, task, args.tau, metric="kl_div").graph
            else:
                graph = circuits.attribute(model, task, method=method, steps=args.steps)
            secs = time.perf_counter() - t
            edge_auc = circuits.roc(graph, truth.in_circuit).auc
            node_auc = circuits.node_roc(graph, truth_nodes).auc
            if method != "acdc":
                graph = circuits.prune.topn(graph, k)
            f = circuits.evaluate_circuit(model, graph, task).faithfulness
            print(f"  {method:<22} {edge_auc:9.3f} {node_auc:9.3f} {f:9.3f} {secs:8.2f}")


if __name__ == "__main__":
    main()
