"""The interactive circuit explorer: one self-contained, offline HTML file.

Python computes everything that does not change while a reader explores: the ranking of the
edges (the same stable sort as :func:`circuits.circuit.topn`), a layout (one row per residual
stage, one column per head, as the static diagram's ranks) and the faithfulness curve's points.
They are embedded as JSON next to the page's script (``static/explorer.js``) and style
(``static/explorer.css``), both shipped with the package; nothing is fetched when the page opens.

In the page: pan (drag) and zoom (wheel); hover an edge for its name, score, rank and q/k/v slot;
click a node to highlight every ``input -> node -> logits`` path among the drawn edges; a slider
over the number of top-ranked edges (redrawn as ``topn(k)`` with dangling edges removed, with the
faithfulness of that size read from the curve); a search box for node names; toggles for merged
q/k/v and collapsed heads (the static diagram's ``merge_qkv`` and ``collapse_heads``).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..evaluation import Curve
from ..graph import Graph, head_of, node_layer
from ..io import atomic_write_text, check_target
from .diagram import (
    GROUP_BORDERS,
    GROUP_FILLS,
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    default_title,
    node_kind,
    node_stage,
    resolve_groups,
    stage_label,
)

__all__ = ["EXPLORER_TOP", "MAX_EXPLORER_EDGES", "explorer_data", "explorer_page", "render_explorer", "edge_ranks", "page_data"]

EXPLORER_TOP = 2000
"""Default number of top-ranked edges embedded for the slider (the circuit's edges are always embedded)."""
MAX_EXPLORER_EDGES = 2000
"""Circuits with more edges than this are refused unless ``force`` (the page is made for this many)."""
ROW_HEIGHT, COLUMN_WIDTH, MARGIN = 64.0, 72.0, 40.0
_STATIC = ("explorer.css", "explorer.js")
_DATA_TAG = '<script id="circuit-data" type="application/json">'


def edge_ranks(graph: Graph, absolute: bool = True) -> torch.Tensor:
    """``[E]`` long, 1-based rank of every edge by score (``|score|`` if ``absolute``), NaN last.

    Ties are broken by edge index, as :func:`circuits.circuit.topn`: the edges of rank ``<= n``
    are exactly ``topn(graph, n, prune=False)``'s.
    """
    s = graph.scores.detach().float().cpu()
    s = s.abs() if absolute else s
    s = torch.nan_to_num(s, nan=-math.inf)
    order = torch.argsort(s, descending=True, stable=True)
    rank = torch.empty(graph.n_edges, dtype=torch.long)
    rank[order] = torch.arange(1, graph.n_edges + 1)
    return rank


def _ranking_is_absolute(graph: Graph, curve: Curve | None) -> bool:
    """The curve's ranking (CMD = |score|, CPR = signed), else the circuit selection's, else |score|."""
    if curve is not None:
        return curve.kind != "CPR"
    sel = graph.provenance.selection
    return True if sel is None else bool(sel.absolute)


def _layout(graph: Graph, names: Sequence[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float, float]:
    """Positions of ``names`` plus one collapsed node ``a{l}`` per layer with a head among them;
    returns (nodes, row labels, width, height). Row of a node = its residual stage (logits on top)."""
    L, H = graph.n_layers, graph.n_heads
    width = 2 * MARGIN + max(H, 2) * COLUMN_WIDTH
    height = 2 * MARGIN + (2 * L + 1) * ROW_HEIGHT

    def y_of(stage: int) -> float:
        return MARGIN + (2 * L + 1 - stage) * ROW_HEIGHT

    centre = width / 2
    layers = sorted({hd[0] for n in names if (hd := head_of(n))})
    nodes: list[dict[str, Any]] = []
    for n in names:
        hd = head_of(n)
        x = MARGIN + (hd[1] + 0.5) * COLUMN_WIDTH if hd and H > 1 else centre
        nodes.append({"name": n, "kind": node_kind(n), "x": round(x, 1), "y": y_of(node_stage(n, L)),
                      "layer": node_layer(n) if n not in ("input", "logits") else (-1 if n == "input" else L)})
    index = {n["name"]: i for i, n in enumerate(nodes)}
    for layer in layers:
        index[f"a{layer}"] = len(nodes)
        nodes.append({"name": f"a{layer}", "kind": "layer", "x": centre, "y": y_of(2 * layer + 1), "layer": layer})
    for n in nodes:  # the node a head becomes when heads are collapsed
        hd = head_of(n["name"])
        n["collapsed"] = index[f"a{hd[0]}"] if hd else index[n["name"]]
    rows = [{"y": y_of(s), "label": stage_label(s, L)} for s in range(2 * L + 2)]
    return nodes, rows, width, height


def _curve_data(curve: Curve | None) -> dict[str, Any] | None:
    """The curve's points as the slider reads them: requested size (top k before pruning) -> f."""
    if curve is None:
        return None
    points = [(int(n), float(f), int(ne)) for n, f, ne in zip(curve.n_requested or [], curve.faithfulness, curve.n_edges)
              if math.isfinite(f)]
    return {"kind": curve.kind, "area": curve.area if math.isfinite(curve.area) else None, "method": curve.method,
            "n_requested": [p[0] for p in points], "faithfulness": [p[1] for p in points],
            "n_edges": [p[2] for p in points]}


def explorer_data(
    graph: Graph,
    *,
    curve: Curve | None = None,
    top: int = EXPLORER_TOP,
    absolute: bool | None = None,
    merge_qkv: bool = False,
    collapse_heads: bool = False,
    groups: Mapping[str, Iterable[str]] | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Everything the page draws, as JSON-ready values.

    Edges embedded: the ``top`` highest-ranked edges and every in-circuit edge, sorted by rank
    (so ``topn(k)`` is a prefix for ``k <= top``), as columns ``sender``/``receiver`` (indices into
    ``nodes``), ``slot`` (``q``/``k``/``v`` or ``""``), ``score`` (None for NaN), ``rank`` (1-based,
    over all edges) and ``circuit`` (0/1). ``absolute``: rank by ``|score|`` (default: as the
    curve, else as the circuit's selection, else True). ``curve``: its finite points (``n_requested``
    = the top k before dangling edges are removed, as the curve's circuits). The toggles and
    ``groups`` set the page's starting state.
    """
    if curve is not None and curve.total_edges and curve.total_edges != graph.n_edges:
        raise ValueError(f"the curve was measured on a graph of {curve.total_edges} edges, this graph has "
                         f"{graph.n_edges}; pass the curve of this circuit's scores")
    top = max(0, min(int(top), graph.n_edges))
    absolute = _ranking_is_absolute(graph, curve) if absolute is None else bool(absolute)
    rank = edge_ranks(graph, absolute)
    embed = (rank <= top) | graph.in_circuit.cpu()
    idx = embed.nonzero().flatten()
    idx = idx[torch.argsort(rank[idx])]
    lay = graph.layout
    senders = [lay.senders[i] for i in lay.edge_sender[idx].tolist()]
    receivers = [lay.nodes[i] for i in lay.edge_node(idx).tolist()]
    slots = [lay.receivers[i].rpartition("<")[2].rstrip(">") if "<" in lay.receivers[i] else ""
             for i in lay.edge_receiver[idx].tolist()]
    touched = set(senders) | set(receivers) | {"input", "logits"}
    names = sorted(touched, key=lambda n: (node_stage(n, graph.n_layers), head_of(n) or (0, -1), n))
    nodes, rows, width, height = _layout(graph, names)
    at = {n["name"]: i for i, n in enumerate(nodes)}
    scores = [s if math.isfinite(s) else None for s in graph.scores[idx].detach().float().tolist()]
    checked = resolve_groups(graph, groups, set(graph.nodes), collapse_heads=False)  # every node may be drawn
    return {
        "title": title if title is not None else default_title(graph, graph.n_circuit_edges).replace("\n", " — "),
        "meta": {k: v for k, v in graph.provenance.to_dict().items() if isinstance(v, (str, int, float, bool))},
        "n_layers": graph.n_layers, "n_heads": graph.n_heads, "total_edges": graph.n_edges,
        "top": top, "absolute": absolute, "circuit_edges": graph.n_circuit_edges,
        "width": width, "height": height, "rows": rows, "nodes": nodes,
        "edges": {"sender": [at[s] for s in senders], "receiver": [at[r] for r in receivers], "slot": slots,
                  "score": scores, "rank": rank[idx].tolist(), "circuit": graph.in_circuit[idx].int().tolist()},
        "curve": _curve_data(curve),
        "options": {"merge_qkv": bool(merge_qkv), "collapse_heads": bool(collapse_heads)},
        "groups": [{"name": g, "nodes": [at[n] for n in members if n in at],
                    "fill": GROUP_FILLS[i % len(GROUP_FILLS)], "border": GROUP_BORDERS[i % len(GROUP_BORDERS)]}
                   for i, (g, members) in enumerate(checked.items())],
        "colors": {"positive": POSITIVE, "negative": NEGATIVE, "neutral": NEUTRAL},
    }


def _static(name: str) -> str:
    return resources.files("circuits.render").joinpath("static", name).read_text(encoding="utf-8")


def page_data(page: str) -> dict[str, Any]:
    """The data embedded in an explorer page (the text of the file :func:`render_explorer` wrote)."""
    start = page.index(_DATA_TAG) + len(_DATA_TAG)
    return json.loads(page[start:page.index("</script>", start)])


def _script_json(data: Mapping[str, Any]) -> str:
    """JSON safe inside ``<script>``: no ``<``, ``>`` or ``&`` (so no ``</script>``), no NaN."""
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def explorer_page(graph: Graph, *, max_edges: int = MAX_EXPLORER_EDGES, force: bool = False, **kw: Any) -> str:
    """The explorer as one HTML document (script, style and data inline). ``kw`` go to :func:`explorer_data`.

    Raises ``ValueError`` when the circuit has more than ``max_edges`` edges, unless ``force``.
    """
    n = graph.n_circuit_edges
    if n > max_edges and not force:
        raise ValueError(f"the circuit has {n} edges, more than max_edges={max_edges} for the explorer; prune it "
                         "first (e.g. circuits.prune.topn(graph, 500) or `--edges 500`), or pass force=True "
                         "(CLI: --force-render)")
    data = explorer_data(graph, **kw)
    css, js = (_static(f) for f in _STATIC)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(data['title'])}</title>\n<style>\n{css}</style>\n</head>\n<body>\n"
        f"{_DATA_TAG}{_script_json(data)}</script>\n"
        f"<script>\n{js}</script>\n</body>\n</html>\n"
    )


def render_explorer(graph: Graph, path: str | Path, *, overwrite: bool = False, **kw: Any) -> Path:
    """Write :func:`explorer_page` to ``path`` atomically (``FileExistsError`` if it exists, unless ``overwrite``).

    Needs no Graphviz. ``kw``: ``curve``, ``top``, ``absolute``, ``merge_qkv``, ``collapse_heads``,
    ``groups``, ``title`` (see :func:`explorer_data`), ``max_edges``, ``force``.
    """
    path = Path(path)
    check_target(path, overwrite)
    return atomic_write_text(path, explorer_page(graph, **kw), overwrite=overwrite)
