"""From edge scores to circuits: top-n, threshold, top-fraction, greedy, and dangling-edge removal.

Every function takes a :class:`~circuits.graph.Graph` whose ``scores`` are set and returns a
**new** graph with the same scores and the selected circuit (``in_circuit``) and a
:class:`~circuits.graph.Selection` record; the graph given is never changed. Rules follow
EAP-IG / MIB (docs/methods.md, "From scores to a circuit"):

* :func:`topn` keeps the ``n`` highest-scoring edges (``|score|`` when ``absolute``), then
  removes dangling edges, so the final count can be below ``n`` (as ``apply_topn``);
* :func:`threshold` keeps edges with ``score >= t`` (``|score| >= t`` when ``absolute``);
* :func:`top_fraction` is :func:`topn` with ``n = int(k * E)`` (MIB's ``n_k``);
* :func:`greedy` grows a circuit backwards from the logits (``apply_greedy``);
* :func:`remove_dangling` keeps exactly the kept edges that lie on some input -> logits path.

Ties in :func:`topn` are broken by edge index (the earlier edge wins; ``torch.argsort``
with ``stable=True``). All selection is tensor ops; the only Python loops run over
residual-stream stages (``2L + 2`` of them) or, in :func:`greedy`, over its ``n`` steps.
"""

from __future__ import annotations

import torch

from ..graph import Graph, KeepMask, Selection, on_input_logits_paths

__all__ = ["topn", "topn_masks", "threshold", "top_fraction", "greedy", "remove_dangling", "dangling_mask"]


# ---------------------------------------------------------------------------------------------- helpers
def _ranking(graph: Graph, absolute: bool) -> torch.Tensor:
    """Scores used for ranking (``|scores|`` if ``absolute``); NaN scores raise ``ValueError``."""
    s = graph.scores.detach().float().cpu()
    if s.shape != (graph.n_edges,):
        raise ValueError(f"graph.scores must have shape [{graph.n_edges}], got {tuple(s.shape)}")
    bad = torch.isnan(s)
    if bool(bad.any()):
        idx = bad.nonzero().flatten()
        names = graph.edge_names(idx[:5])
        more = f" (and {len(idx) - 5} more)" if len(idx) > 5 else ""
        raise ValueError(f"{len(idx)} edge score(s) are NaN, e.g. {names}{more}; score every edge (or set missing "
                         "scores to 0) before selecting a circuit")
    return s.abs() if absolute else s


def _check_count(graph: Graph, n: int) -> int:
    if isinstance(n, bool) or int(n) != n:
        raise ValueError(f"n must be an integer number of edges, got {n!r}")
    n = int(n)
    if not 0 <= n <= graph.n_edges:
        raise ValueError(f"n must be in [0, {graph.n_edges}] (the graph's edge count), got {n}")
    return n


def _finish(graph: Graph, keep: torch.Tensor, prune: bool, selection: Selection) -> Graph:
    return graph.with_circuit(dangling_mask(graph, keep) if prune else keep, selection)


def dangling_mask(graph: Graph, keep: KeepMask) -> torch.Tensor:
    """Bool ``[E]``: the edges of ``keep`` that lie on an ``input -> logits`` path of kept edges
    (see :func:`circuits.graph.on_input_logits_paths`)."""
    return on_input_logits_paths(graph.layout, keep.bool())


# ---------------------------------------------------------------------------------------------- public
def remove_dangling(graph: Graph) -> Graph:
    """A new graph without the in-circuit edges that are not on any ``input -> logits`` path.

    Removes, e.g., an edge into a node that has no kept outgoing edge, or out of a node (other
    than ``input``) with no kept incoming edge, repeatedly along chains. See :func:`dangling_mask`.
    The selection record is kept.
    """
    return graph.with_circuit(dangling_mask(graph, graph.in_circuit), graph.provenance.selection)


def topn_masks(graph: Graph, ns: list[int] | tuple[int, ...], absolute: bool = True, prune: bool = True) -> torch.Tensor:
    """Bool ``[len(ns), E]``: the :func:`topn` circuit for each ``n`` in ``ns``, from one sort.

    Row ``i`` equals ``topn(graph, ns[i], absolute, prune).in_circuit``.
    """
    counts = [_check_count(graph, n) for n in ns]
    s = _ranking(graph, absolute)
    order = torch.argsort(s, descending=True, stable=True)
    rank = torch.empty(graph.n_edges, dtype=torch.long)
    rank[order] = torch.arange(graph.n_edges)
    out = torch.stack([rank < n for n in counts]) if counts else torch.zeros(0, graph.n_edges, dtype=torch.bool)
    if prune:
        for i in range(len(counts)):
            out[i] = dangling_mask(graph, out[i])
    return out


def topn(graph: Graph, n: int, absolute: bool = True, prune: bool = True) -> Graph:
    """Keep the ``n`` highest-scoring edges (``|score|`` if ``absolute``), then (if ``prune``)
    :func:`remove_dangling`; the final count can be below ``n``. Returns a new graph.

    Ties at the cut are broken by edge index (earlier edges first). ``n`` outside ``[0, E]``
    or NaN scores raise ``ValueError``.
    """
    n = _check_count(graph, n)
    keep = topn_masks(graph, [n], absolute, prune=False)[0]
    return _finish(graph, keep, prune, Selection(rule="topn", n=n, absolute=absolute, prune=prune))


def threshold(graph: Graph, t: float, absolute: bool = True, prune: bool = True) -> Graph:
    """Keep edges with ``score >= t`` (``|score| >= t`` if ``absolute``), then (if ``prune``)
    :func:`remove_dangling`. Returns a new graph. NaN ``t`` or scores raise ``ValueError``."""
    t = float(t)
    if t != t:
        raise ValueError("threshold t is NaN")
    s = _ranking(graph, absolute)
    return _finish(graph, s >= t, prune, Selection(rule="threshold", t=t, absolute=absolute, prune=prune))


def top_fraction(graph: Graph, k: float, absolute: bool = True, prune: bool = True) -> Graph:
    """:func:`topn` with ``n = int(k * E)`` (MIB's rounding down); ``k`` must be in ``(0, 1]``.
    Returns a new graph."""
    k = float(k)
    if not 0.0 < k <= 1.0:
        raise ValueError(f"fraction k must be in (0, 1], got {k}")
    n = int(k * graph.n_edges)
    keep = topn_masks(graph, [n], absolute, prune=False)[0]
    return _finish(graph, keep, prune, Selection(rule="top_fraction", n=n, k=k, absolute=absolute, prune=prune))


def greedy(graph: Graph, n: int, absolute: bool = True, prune: bool = True) -> Graph:
    """EAP-IG's ``apply_greedy``: grow the circuit backwards from ``logits``.

    The frontier starts as the edges into ``logits``. ``n`` times, the best frontier edge
    (``|score|`` if ``absolute``; ties -> lowest edge index) joins the circuit; when its
    sender was not yet in the circuit, the sender's incoming edges join the frontier. Then
    (if ``prune``) :func:`remove_dangling`. Returns a new graph.
    """
    n = _check_count(graph, n)
    s = _ranking(graph, absolute)
    E = graph.n_edges
    recv_node = graph.layout.edge_node()  # [E]
    # per node: its incoming edges, as a CSR layout over edges sorted by receiver node
    by_node = torch.argsort(recv_node, stable=True)
    starts = torch.zeros(graph.n_nodes + 1, dtype=torch.long)
    starts[1:] = torch.bincount(recv_node, minlength=graph.n_nodes).cumsum(0)
    frontier = torch.zeros(E, dtype=torch.bool)  # candidate edges not yet taken
    logits = graph.layout.logits_node
    frontier[by_node[starts[logits]: starts[logits + 1]]] = True
    keep = torch.zeros(E, dtype=torch.bool)
    node_in = torch.zeros(graph.n_nodes, dtype=torch.bool)
    node_in[logits] = True
    for _ in range(n):
        cand = frontier.nonzero().flatten()  # ascending edge index
        if len(cand) == 0:
            break  # cannot happen: every node has an edge into logits, so all E edges are reachable
        e = int(cand[torch.argmax(s[cand])])  # argmax returns the first maximum: lowest index on ties
        keep[e] = True
        frontier[e] = False
        u = int(graph.edge_sender[e])
        if not bool(node_in[u]):
            node_in[u] = True
            frontier[by_node[starts[u]: starts[u + 1]]] = True
    return _finish(graph, keep, prune, Selection(rule="greedy", n=n, absolute=absolute, prune=prune))
