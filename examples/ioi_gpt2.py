"""IOI on GPT-2 small loaded from a local folder (weights cannot be downloaded here).

Point --model-dir (or $GPT2_DIR) at a folder saved with `save_pretrained` holding GPT-2
small's config.json and model.safetensors. Without one, the script says so and exits 0.
The tokenizer ships with circuits.

    python examples/ioi_gpt2.py --model-dir /path/to/gpt2 --n 100 --edges 400
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import circuits
from circuits.tasks import gpt2_tokenizer

# The 26 IOI heads of Wang et al. 2023 ("Interpretability in the Wild", their Fig. 2), as groups for the diagram.
IOI_GROUPS = {
    "name movers": ["a9.h9", "a9.h6", "a10.h0"],
    "backup name movers": ["a10.h10", "a10.h6", "a10.h2", "a10.h1", "a11.h2", "a9.h7", "a9.h0", "a11.h9"],
    "negative name movers": ["a10.h7", "a11.h10"],
    "S-inhibition": ["a7.h3", "a7.h9", "a8.h6", "a8.h10"],
    "induction": ["a5.h5", "a5.h8", "a5.h9", "a6.h9"],
    "duplicate token": ["a0.h1", "a0.h10", "a3.h0"],
    "previous token": ["a2.h2", "a4.h11"],
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model-dir", default=os.environ.get("GPT2_DIR"))
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--edges", type=int, default=400)
    p.add_argument("--out", default="ioi-out")
    args = p.parse_args(argv)
    if not args.model_dir or not (Path(args.model_dir) / "config.json").exists():
        print("skipped: no local GPT-2 folder (pass --model-dir or set GPT2_DIR to a save_pretrained folder)")
        return 0
    model, _ = circuits.zoo.load(args.model_dir)
    task = circuits.load_task("ioi", gpt2_tokenizer(), n=args.n, seed=0)
    train, test = task.split(0.5, seed=0)
    graph = circuits.attribute(model, train, method="eap-ig-inputs", steps=5, progress=True)
    graph = circuits.prune.topn(graph, args.edges)
    report = circuits.evaluate_circuit(model, graph, test)
    truth_nodes = [h for heads in IOI_GROUPS.values() for h in heads]
    node_auc = circuits.node_roc(graph, truth_nodes).auc
    print(f"{graph.n_circuit_edges} edges, faithfulness {report.faithfulness:.3f}, node AUC vs the 26 IOI heads {node_auc:.3f}")
    graph = graph.with_provenance(model="gpt2", task="ioi", faithfulness=report.faithfulness)
    circuits.save(graph, f"{args.out}/ioi.svg", overwrite=True, groups=IOI_GROUPS, merge_qkv=True, force=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
