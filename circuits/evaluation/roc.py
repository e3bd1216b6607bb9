"""ROC curves and AUC of edge / node scores against a ground-truth circuit."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from ..graph import Graph
from ..io import json_safe

__all__ = ["RocResult", "roc", "node_roc", "node_scores_max"]


@dataclass
class RocResult:
    """ROC curve (``fpr``, ``tpr`` from (0, 0) to (1, 1)), the score ``thresholds`` of its points
    (``+inf`` for the first), and ``auc`` = Mann-Whitney U / (n_pos n_neg), ties counted half."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float
    n_pos: int
    n_neg: int

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"fpr": self.fpr.tolist(), "tpr": self.tpr.tolist(), "thresholds": self.thresholds.tolist(),
                           "auc": self.auc, "n_pos": self.n_pos, "n_neg": self.n_neg})


def _roc_arrays(scores: np.ndarray, truth: np.ndarray) -> RocResult:
    if scores.shape != truth.shape or scores.ndim != 1:
        raise ValueError(f"scores and truth must be 1-D of equal length, got {scores.shape} and {truth.shape}")
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} scores are NaN")
    P, N = int(truth.sum()), int((~truth).sum())
    if P == 0 or N == 0:
        raise ValueError(f"ROC needs positives and negatives in the ground truth, got {P} positive and {N} negative")
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    tp, fp = np.cumsum(t), np.cumsum(~t)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each run of tied scores
    tpr = np.r_[0.0, tp[last] / P]
    fpr = np.r_[0.0, fp[last] / N]
    thresholds = np.r_[np.inf, s[last]]
    ranks = rankdata(scores)  # average ranks: ties count half
    auc = float((ranks[truth].sum() - P * (P + 1) / 2.0) / (P * N))
    return RocResult(fpr, tpr, thresholds, auc, P, N)


def _edge_truth(graph: Graph | None, truth: torch.Tensor | np.ndarray | Graph | Iterable[str], n_edges: int) -> np.ndarray:
    if isinstance(truth, Graph):
        if graph is not None and (truth.n_layers, truth.n_heads, truth.parallel_attn_mlp) != (
                graph.n_layers, graph.n_heads, graph.parallel_attn_mlp):
            raise ValueError(f"ground-truth graph {truth!r} has another structure than the scored graph {graph!r}")
        if truth.n_edges != n_edges:
            raise ValueError(f"ground-truth graph {truth!r} has {truth.n_edges} edges, the scores have {n_edges}")
        return truth.in_circuit.cpu().numpy().astype(bool)
    if isinstance(truth, (torch.Tensor, np.ndarray)):
        t = np.asarray(truth.cpu() if isinstance(truth, torch.Tensor) else truth)
        if t.shape != (n_edges,):
            raise ValueError(f"a ground-truth mask must have shape [{n_edges}], got {t.shape}")
        return t.astype(bool)
    if graph is None:
        raise ValueError("ground truth given as edge names: pass scores as a Graph (or graph=...) to resolve them")
    names = [truth] if isinstance(truth, str) else list(truth)
    index = {n: i for i, n in enumerate(graph.edge_names())}
    unknown = [n for n in names if n not in index]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ValueError(f"ground truth names {len(unknown)} edge(s) the graph does not have: {shown} "
                         f"(graph: {graph.n_layers} layers x {graph.n_heads} heads; names look like 'a0.h1->a1.h2<k>')")
    t = np.zeros(n_edges, dtype=bool)
    t[[index[n] for n in names]] = True
    return t


def roc(scores: Graph | torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray | Graph | Iterable[str],
        absolute: bool = True, graph: Graph | None = None) -> RocResult:
    """Edge-level ROC of ``scores`` against a ground-truth circuit.

    ``scores``: a Graph (its ``scores``) or ``[E]`` values (then pass ``graph`` to resolve edge
    names). ``truth``: a bool ``[E]`` mask, a ground-truth Graph (its ``in_circuit``) or edge
    names. Edges are ranked by ``|score|`` when ``absolute``. The curve has one point per
    distinct score (tied edges enter together); the AUC is the Mann-Whitney statistic with
    average ranks, which equals the trapezoid area of that curve.
    """
    if isinstance(scores, Graph):
        graph = scores if graph is None else graph
        s = scores.scores.detach().cpu().double().numpy()
    else:
        s = np.asarray(scores.detach().cpu().double() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    t = _edge_truth(graph, truth, len(s))
    return _roc_arrays(np.abs(s) if absolute else s, t)


def _node_truth(graph: Graph, truth: torch.Tensor | np.ndarray | Graph | Iterable[str]) -> np.ndarray:
    if isinstance(truth, Graph):
        if (truth.n_layers, truth.n_heads, truth.parallel_attn_mlp) != (graph.n_layers, graph.n_heads, graph.parallel_attn_mlp):
            raise ValueError(f"ground-truth graph {truth!r} has another structure than the scored graph {graph!r}")
        return truth.node_in_circuit().numpy()
    if isinstance(truth, (torch.Tensor, np.ndarray)):
        t = np.asarray(truth.cpu() if isinstance(truth, torch.Tensor) else truth).astype(bool)
        if t.shape != (graph.n_nodes,):
            raise ValueError(f"a ground-truth node mask must have shape [{graph.n_nodes}] (graph.nodes), got {t.shape}")
        return t
    names = [truth] if isinstance(truth, str) else list(truth)
    index = {n: i for i, n in enumerate(graph.nodes)}
    unknown = [n for n in names if n not in index]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ValueError(f"ground truth names {len(unknown)} node(s) the graph does not have: {shown} "
                         f"(graph: {graph.n_layers} layers x {graph.n_heads} heads; nodes look like 'a3.h5', 'm7')")
    t = np.zeros(graph.n_nodes, dtype=bool)
    t[[index[n] for n in names]] = True
    return t


def node_scores_max(graph: Graph) -> torch.Tensor:
    """``[N]`` node score: the max ``|score|`` over the node's incoming and outgoing edges."""
    a = graph.scores.detach().float().abs().cpu()
    out = torch.zeros(graph.n_nodes)
    out.scatter_reduce_(0, graph.edge_sender, a, reduce="amax")
    out.scatter_reduce_(0, graph.receiver_node[graph.edge_receiver], a, reduce="amax")
    return out


def node_roc(graph_scores: Graph, truth_nodes: torch.Tensor | np.ndarray | Graph | Iterable[str],
             include_io: bool = False) -> RocResult:
    """Node-level ROC: node score = max ``|score|`` over the node's incident edges (in and out).

    ``truth_nodes``: node names (``'a9.h9'``, ``'m3'``), a bool ``[N]`` mask over ``graph.nodes``
    or a ground-truth Graph (nodes touched by its circuit). ``input`` and ``logits`` belong to
    every circuit, so they are left out unless ``include_io`` (naming them is allowed).
    """
    t = _node_truth(graph_scores, truth_nodes)
    s = node_scores_max(graph_scores).double().numpy()
    keep = np.ones(graph_scores.n_nodes, dtype=bool)
    if not include_io:
        keep[0] = keep[graph_scores.n_senders] = False
    return _roc_arrays(s[keep], t[keep])


