"""Comparing circuits of one model: edge and node overlap, rank agreement of scores, and the
faithfulness of their intersection and union.

For circuits ``A`` and ``B`` (edge sets, ``in_circuit``): Jaccard ``|A ∩ B| / |A ∪ B|`` over edges
and over nodes (a node is in a circuit when one of its edges is); against a reference ``R`` (e.g. a
ground truth) precision ``|C ∩ R| / |C|`` and recall ``|C ∩ R| / |R|``; Spearman's rank correlation
of the two score vectors over the edges both circuits contain (``None`` below 3 shared edges or
when a side is constant). With a model and data, the intersection (edges in every circuit) and the
union (edges in any) are evaluated like any circuit (:func:`evaluate_circuit`, dangling edges
removed, one :class:`PatchRunner` for both).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr
from torch import nn

from ..graph import Graph
from ..io import atomic_write_text, json_safe
from ..patching import PatchRunner
from ..runtime import TracedModel
from ..tasks import Batch, Task
from .report import evaluate_circuit

__all__ = ["Comparison", "compare", "intersection", "union"]


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare`; pairwise tables are ``[i][j]`` over :attr:`names`."""

    names: list[str]
    n_edges: list[int]
    n_nodes: list[int]
    edge_jaccard: list[list[float]]
    node_jaccard: list[list[float]]
    spearman: list[list[float | None]]
    shared_edges: list[list[int]]
    n_intersection: int
    n_union: int
    reference: str | None = None
    precision: dict[str, float] = field(default_factory=dict)
    recall: dict[str, float] = field(default_factory=dict)
    node_precision: dict[str, float] = field(default_factory=dict)
    node_recall: dict[str, float] = field(default_factory=dict)
    faithfulness: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return json_safe({"format": "circuits.compare", "version": 1, **d})

    def to_json(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write :meth:`to_dict` atomically (strict JSON)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False), overwrite=overwrite)

    def table(self) -> str:
        """A plain-text table: sizes, then every pair, then precision/recall and faithfulness if measured."""
        lines = [f"  {'circuit':<28} {'edges':>7} {'nodes':>6}"]
        lines += [f"  {n[-28:]:<28} {e:>7} {v:>6}" for n, e, v in zip(self.names, self.n_edges, self.n_nodes)]
        lines += ["", f"  {'pair':<40} {'shared':>7} {'edge J':>7} {'node J':>7} {'spearman':>9}"]
        for i in range(len(self.names)):
            for j in range(i + 1, len(self.names)):
                rho = self.spearman[i][j]
                pair = f"{self.names[i][-19:]} ~ {self.names[j][-18:]}"
                lines.append(f"  {pair:<40} {self.shared_edges[i][j]:>7} {self.edge_jaccard[i][j]:>7.3f} "
                             f"{self.node_jaccard[i][j]:>7.3f} {'n/a' if rho is None else f'{rho:.3f}':>9}")
        lines += ["", f"  intersection {self.n_intersection} edges, union {self.n_union} edges"]
        if self.reference is not None:
            head = f"against {self.reference[-20:]}"
            lines += ["", f"  {head:<28}  {'edge P':>7} {'edge R':>7} {'node P':>7} {'node R':>7}"]
            for n in self.precision:
                lines.append(f"  {n[-28:]:<28}  {self.precision[n]:>7.3f} {self.recall[n]:>7.3f} "
                             f"{self.node_precision[n]:>7.3f} {self.node_recall[n]:>7.3f}")
        if self.faithfulness is not None:
            lines += ["", "  faithfulness: " + ", ".join(f"{k} {v:.3f}" for k, v in self.faithfulness.items())]
        return "\n".join(lines)


def _check_shapes(graphs: Sequence[Graph], names: Sequence[str]) -> None:
    if len(graphs) < 2:
        raise ValueError(f"compare needs at least 2 circuits, got {len(graphs)}")
    if len(names) != len(graphs) or len(set(names)) != len(names):
        raise ValueError("give one distinct name per circuit")
    for g, n in zip(graphs[1:], names[1:]):
        if not g.same_shape(graphs[0]):
            (L, H, _), (L2, H2, _) = graphs[0].layout.shape, g.layout.shape
            raise ValueError(f"{n} is a circuit of a model of {L2} layers x {H2} heads, but {names[0]} is of "
                             f"{L} layers x {H} heads; compare circuits of one model")


def intersection(graphs: Sequence[Graph]) -> Graph:
    """The edges in every circuit (scores of the first graph)."""
    keep = torch.stack([g.in_circuit for g in graphs]).all(0)
    return graphs[0].with_circuit(keep)


def union(graphs: Sequence[Graph]) -> Graph:
    """The edges in any circuit (scores of the first graph)."""
    keep = torch.stack([g.in_circuit for g in graphs]).any(0)
    return graphs[0].with_circuit(keep)


def _jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a ∩ b| / |a ∪ b|`` of bool masks; 1.0 for two empty sets."""
    u = int((a | b).sum())
    return 1.0 if u == 0 else int((a & b).sum()) / u


def _share(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a ∩ b| / |a|`` (NaN when ``a`` is empty)."""
    n = int(a.sum())
    return float("nan") if n == 0 else int((a & b).sum()) / n


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float | None:
    ok = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[ok], y[ok]
    if x.numel() < 3 or bool((x == x[0]).all()) or bool((y == y[0]).all()):
        return None
    return float(spearmanr(x.numpy(), y.numpy()).statistic)


def compare(
    graphs: Sequence[Graph],
    names: Sequence[str] | None = None,
    reference: int | str | None = None,
    model: nn.Module | TracedModel | None = None,
    data: Task | Iterable[Batch] | None = None,
    metric: str | Callable | None = None,
    batch_size: int = 16,
) -> Comparison:
    """Compare two or more circuits of one model (see the module docstring for every quantity).

    ``names`` default to ``c0, c1, ...``; ``reference`` (an index or a name) picks the circuit the
    others' precision and recall are measured against. With ``model`` and ``data`` the intersection
    and union are evaluated (normalized faithfulness, held by :attr:`Comparison.faithfulness`).
    Raises ``ValueError`` for fewer than 2 circuits or circuits of different model shapes.
    """
    names = list(names) if names is not None else [f"c{i}" for i in range(len(graphs))]
    _check_shapes(graphs, names)
    edges = [g.in_circuit for g in graphs]
    nodes = [g.node_in_circuit() for g in graphs]
    k = len(graphs)
    pairs = [[(i, j) for j in range(k)] for i in range(k)]
    shared = [[int((edges[i] & edges[j]).sum()) for i, j in row] for row in pairs]
    rho = [[_spearman(graphs[i].scores[edges[i] & edges[j]], graphs[j].scores[edges[i] & edges[j]]) for i, j in row]
           for row in pairs]
    out: dict[str, Any] = {}
    if reference is not None:
        if isinstance(reference, str) and reference not in names:
            raise ValueError(f"reference {reference!r} is not one of the circuits ({', '.join(names)})")
        r = names.index(reference) if isinstance(reference, str) else int(reference)
        others = [i for i in range(k) if i != r]
        out = {"reference": names[r],
               "precision": {names[i]: _share(edges[i], edges[r]) for i in others},
               "recall": {names[i]: _share(edges[r], edges[i]) for i in others},
               "node_precision": {names[i]: _share(nodes[i], nodes[r]) for i in others},
               "node_recall": {names[i]: _share(nodes[r], nodes[i]) for i in others}}
    inter, uni = intersection(graphs), union(graphs)
    if model is not None and data is not None:
        runner = PatchRunner(model, data, metric, batch_size=batch_size)
        out["faithfulness"] = {label: evaluate_circuit(model, g, data, runner=runner).faithfulness
                               for label, g in (("intersection", inter), ("union", uni))}
    return Comparison(
        names=names, n_edges=[g.n_circuit_edges for g in graphs], n_nodes=[int(n.sum()) for n in nodes],
        edge_jaccard=[[_jaccard(edges[i], edges[j]) for i, j in row] for row in pairs],
        node_jaccard=[[_jaccard(nodes[i], nodes[j]) for i, j in row] for row in pairs],
        spearman=rho, shared_edges=shared, n_intersection=inter.n_circuit_edges, n_union=uni.n_circuit_edges, **out)
