"""Write the example circuit diagrams shown in docs/rendering.md into docs/img/.

The circuit is SYNTHETIC: a hand-picked, induction-like set of ~45 edges on a 4-layer x 4-head
graph with random signed scores from a seeded generator. It shows what the renderer draws; it
is not the result of running any discovery method on any model.

    python scripts/make_example_diagrams.py [--out docs/img]    # from the repository root
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from circuits.graph import Graph, Provenance, Scoring
from circuits.render import render, render_html

# (edge, typical magnitude, sign). Previous-token heads a0.h1/a0.h3 feed the keys of the
# induction heads a1.h2/a2.h0/a2.h3 (K-composition); their queries and values read the
# current token; a3.h1 is a negative (copy-suppression-like) head.
EDGES: list[tuple[str, float, int]] = [
    # previous-token heads
    ("input->a0.h1<q>", 0.6, 1), ("input->a0.h1<k>", 0.9, 1), ("input->a0.h1<v>", 1.2, 1),
    ("input->a0.h3<k>", 0.3, 1), ("input->a0.h3<v>", 0.5, 1),
    ("input->m0", 1.0, 1), ("a0.h1->m0", 0.3, 1), ("a0.h3->m0", 0.2, -1),
    # layer-1 induction head a1.h2 and helper a1.h0
    ("input->a1.h2<q>", 0.7, 1), ("m0->a1.h2<q>", 0.5, 1),
    ("a0.h1->a1.h2<k>", 1.6, 1), ("a0.h3->a1.h2<k>", 0.6, 1),
    ("input->a1.h2<v>", 0.9, 1), ("m0->a1.h2<v>", 0.6, 1),
    ("input->a1.h0<q>", 0.3, 1), ("a0.h1->a1.h0<k>", 0.4, -1), ("m0->a1.h0<v>", 0.3, 1),
    ("a1.h2->m1", 0.5, 1), ("m0->m1", 0.4, 1), ("a1.h0->m1", 0.2, -1),
    # layer-2 induction heads a2.h0 and a2.h3
    ("input->a2.h0<q>", 0.6, 1), ("m1->a2.h0<q>", 0.4, 1),
    ("a0.h1->a2.h0<k>", 1.3, 1), ("a1.h2->a2.h0<k>", 0.4, -1),
    ("input->a2.h0<v>", 0.8, 1), ("m0->a2.h0<v>", 0.5, 1),
    ("input->a2.h3<q>", 0.3, 1), ("a0.h3->a2.h3<k>", 0.7, 1), ("m0->a2.h3<v>", 0.4, 1),
    # layer-3: negative head a3.h1 and output head a3.h2
    ("a1.h2->a3.h1<q>", 0.5, 1), ("a2.h0->a3.h1<q>", 0.4, 1), ("input->a3.h1<v>", 0.5, 1),
    ("a2.h0->a3.h2<v>", 0.6, 1), ("a1.h2->a3.h2<v>", 0.4, 1), ("m1->a3.h2<q>", 0.3, 1),
    ("a2.h0->m3", 0.5, 1), ("a2.h3->m3", 0.3, 1), ("m1->m3", 0.3, 1), ("a3.h2->m3", 0.2, -1),
    # logits
    ("a1.h2->logits", 1.8, 1), ("a2.h0->logits", 1.5, 1), ("a2.h3->logits", 0.6, 1),
    ("a3.h1->logits", 0.9, -1), ("a3.h2->logits", 0.7, 1), ("m3->logits", 0.8, 1),
    ("m1->logits", 0.3, 1), ("input->logits", 0.4, -1),
]

GROUPS: dict[str, list[str]] = {
    "previous-token heads": ["a0.h1", "a0.h3"],
    "induction heads": ["a1.h2", "a2.h0", "a2.h3"],
    "negative head": ["a3.h1"],
}


def example_graph(seed: int = 0) -> Graph:
    """The synthetic example circuit: EDGES in the circuit with jittered signed scores."""
    prov = Provenance(model="synthetic 4x4", task="induction-like (synthetic)")
    g = Graph.build(4, 4, provenance=prov)
    gen = torch.Generator().manual_seed(seed)
    names = [e for e, _, _ in EDGES]
    mags = torch.tensor([m for _, m, _ in EDGES])
    signs = torch.tensor([s for _, _, s in EDGES], dtype=torch.float32)
    jitter = 1.0 + 0.25 * torch.randn(len(EDGES), generator=gen)
    # Small random noise on every other edge, so the graph looks like attribution output.
    scores = 0.05 * torch.randn(g.n_edges, generator=gen)
    scores[g.edge_index(names)] = (signs * mags * jitter.abs()).float()
    g = g.with_scores(scores, scoring=Scoring(method="hand-made example"))
    return g.with_circuit(names).with_provenance(faithfulness=0.87)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/img", help="output folder (default docs/img)")
    args = ap.parse_args()
    out = Path(args.out)
    g = example_graph()
    written = []
    for suffix in ("svg", "png"):
        written.append(render(g, out / f"example_circuit.{suffix}", overwrite=True))
        written.append(render(g, out / f"example_circuit_merged.{suffix}", overwrite=True, merge_qkv=True, groups=GROUPS))
    written.append(render(g, out / "example_circuit_collapsed.png", overwrite=True, collapse_heads=True))
    written.append(render_html(g, out / "example_circuit.html", overwrite=True))
    for p in written:
        print(p)


if __name__ == "__main__":
    main()
