"""Circuit diagrams people read: Graphviz ``dot`` source, SVG/PNG/PDF files and an HTML page.

Only in-circuit edges (and the nodes they touch) are drawn. The layout follows the
residual stream from ``input`` (bottom) to ``logits`` (top): one rank per stage, the heads
of layer ``l`` on one rank and its MLP ``m{l}`` on the rank above. Edge colour is the sign
of the score (blue positive, red negative, grey zero/NaN), edge width its magnitude relative
to the strongest drawn edge, and the line style the head input it feeds (q solid, k dashed,
v dotted).

:func:`to_dot` needs only the ``graphviz`` Python package; :func:`render` and
:func:`render_html` also need Graphviz's ``dot`` program (see :func:`require_dot`).
"""

from __future__ import annotations

import html
import math
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import graphviz

from ..graph import Graph, node_layer, split_receiver
from ..io import atomic_write_bytes, check_target
from .formats import DIAGRAM_FORMATS, resolve_format

FONT = "Helvetica"
POSITIVE = "#2166ac"
NEGATIVE = "#b2182b"
NEUTRAL = "#8c8c8c"
QKV_STYLE: Mapping[str, str] = {"q": "solid", "k": "dashed", "v": "dotted", "": "solid"}
MIN_PENWIDTH, MAX_PENWIDTH = 0.6, 5.0
# Fill / border colours of the node kinds and the pastel fills of user groups.
NODE_STYLE: Mapping[str, Mapping[str, str]] = {
    "head": {"shape": "box", "style": "rounded,filled", "fillcolor": "#fff2cc", "color": "#a6802a"},
    "mlp": {"shape": "box", "style": "filled", "fillcolor": "#dcefd5", "color": "#4f7f3a"},
    "input": {"shape": "oval", "style": "filled,bold", "fillcolor": "#e3e3e3", "color": "#555555"},
    "logits": {"shape": "oval", "style": "filled,bold", "fillcolor": "#e3e3e3", "color": "#555555"},
}
GROUP_FILLS: tuple[str, ...] = ("#eef3fb", "#fbefef", "#eff8ee", "#f6f0fa", "#fdf5e6", "#eaf7f7", "#f7f7e8", "#f3f3f3")
GROUP_BORDERS: tuple[str, ...] = ("#7a9cc6", "#c98a8a", "#7fae7a", "#a78bbf", "#cda36a", "#6fb0b0", "#b0b060", "#999999")

_DOT_MISSING = (
    "Graphviz's `dot` program is not installed (or not on PATH), so circuits cannot draw SVG/PNG/PDF "
    "diagrams. Install it with your system package manager: on Debian/Ubuntu `apt-get install graphviz`, "
    "on macOS `brew install graphviz` (pip cannot provide it; the `graphviz` Python package is only a "
    "wrapper). JSON/GraphML/GEXF/CSV/dot exports (circuits.export.save) still work without it."
)
_COLLAPSED_RE = re.compile(r"^a(\d+)$")
_HEAD_RE = re.compile(r"^a(\d+)\.h(\d+)$")


@dataclass(frozen=True)
class DrawnEdge:
    """One drawn arrow: possibly the sum of several graph edges (merged q/k/v, collapsed heads)."""

    sender: str
    receiver: str
    input: str  # "q" / "k" / "v", or "" (MLP, logits, merged q/k/v)
    score: float
    names: tuple[str, ...]  # the graph edges it stands for


# ---------------------------------------------------------------------- drawn edges and nodes
def drawn_edges(graph: Graph, *, merge_qkv: bool = False, collapse_heads: bool = False) -> list[DrawnEdge]:
    """The in-circuit edges of ``graph`` as drawn: q/k/v merged and/or heads collapsed, scores summed.

    Order follows the graph's edge order (topological by sender).
    """
    idx = graph.in_circuit.nonzero().flatten()
    names = graph.edge_names(idx)
    scores = graph.scores[idx].tolist()
    acc: dict[tuple[str, str, str], tuple[float, list[str]]] = {}
    for name, score in zip(names, scores):
        sender, recv = name.split("->", 1)
        node, inp = split_receiver(recv)
        if collapse_heads:
            sender, node = collapsed_node(sender), collapsed_node(node)
        if merge_qkv:
            inp = ""
        key = (sender, node, inp)
        total, members = acc.get(key, (0.0, []))
        acc[key] = (total + float(score), members + [name])
    return [DrawnEdge(s, r, i, total, tuple(members)) for (s, r, i), (total, members) in acc.items()]


def collapsed_node(name: str) -> str:
    """``"a3.h5"`` -> ``"a3"`` (all heads of a layer as one node); other names unchanged."""
    m = _HEAD_RE.match(name)
    return f"a{m.group(1)}" if m else name


def node_kind(name: str) -> str:
    """``input`` / ``logits`` / ``head`` (``a3.h5`` or collapsed ``a3``) / ``mlp``."""
    if name in ("input", "logits"):
        return name
    return "head" if (_HEAD_RE.match(name) or _COLLAPSED_RE.match(name)) else "mlp"


def node_stage(name: str, n_layers: int) -> int:
    """Residual-stream stage of a drawn node: input 0, heads of layer l 2l+1, ``m{l}`` 2l+2, logits 2L+1."""
    if name == "logits":
        return 2 * n_layers + 1
    if name == "input":
        return 0
    m = _COLLAPSED_RE.match(name)
    if m:
        return 2 * int(m.group(1)) + 1
    layer = node_layer(name)
    return 2 * layer + (1 if node_kind(name) == "head" else 2)


def stage_label(stage: int, n_layers: int) -> str:
    """The name of residual stage ``stage`` (0 = embed, then per layer attn and mlp, last = unembed)."""
    if stage == 0:
        return "embed"
    if stage == 2 * n_layers + 1:
        return "unembed"
    layer, is_mlp = divmod(stage - 1, 2)
    return f"L{layer} {'mlp' if is_mlp else 'attn'}"


# ---------------------------------------------------------------------- styling helpers
def edge_color(score: float, strength: float = 1.0) -> str:
    """Blue for positive, red for negative, grey for zero/NaN; ``strength`` in [0, 1] sets opacity."""
    if not math.isfinite(score) or score == 0:
        return NEUTRAL
    alpha = int(round(255 * (0.45 + 0.55 * min(max(strength, 0.0), 1.0))))
    return f"{POSITIVE if score > 0 else NEGATIVE}{alpha:02x}"


def penwidth(score: float, max_abs: float) -> float:
    """Line width in ``[MIN_PENWIDTH, MAX_PENWIDTH]`` proportional to ``|score| / max_abs``.

    NaN/inf scores get the minimum; if no edge has a nonzero score (an unscored circuit) all get 1.2.
    """
    if not math.isfinite(score):
        return MIN_PENWIDTH
    if max_abs <= 0:
        return 1.2
    return MIN_PENWIDTH + (MAX_PENWIDTH - MIN_PENWIDTH) * min(abs(score) / max_abs, 1.0)


def fmt_score(x: float) -> str:
    """Signed, 4 significant digits (``+0.1234``, ``-1.5e-05``, ``nan``)."""
    return "nan" if math.isnan(x) else f"{x:+.4g}"


def default_title(graph: Graph, n_edges: int) -> str:
    """``model · task · method`` and ``N edges · faithfulness F`` from the graph's provenance."""
    meta = graph.provenance.to_dict()
    head = " · ".join(str(meta[k]) for k in ("model", "task", "method") if meta.get(k) not in (None, ""))
    tail = f"{n_edges} edge{'s' if n_edges != 1 else ''}"
    faith = meta.get("faithfulness")
    if isinstance(faith, (int, float)) and not isinstance(faith, bool):
        tail += f" · faithfulness {faith:.3g}"
    elif faith is not None:
        tail += f" · faithfulness {faith}"
    return f"{head}\n{tail}" if head else tail


def _html_lines(text: str, bold_first: bool) -> str:
    lines = [html.escape(line) for line in text.split("\n")]
    if bold_first and lines:
        lines[0] = f"<b>{lines[0]}</b>"
    return "<br/>".join(lines)


def _legend_label(edges: Sequence[DrawnEdge], collapse_heads: bool, merge_qkv: bool,
                  color_legend: Sequence[tuple[str, str]] | None = None) -> str:
    """HTML-like label of the legend box: colours, line styles, widths."""
    rows = [
        (f'<font color="{POSITIVE}"><b>━━━</b></font>', "positive score"),
        (f'<font color="{NEGATIVE}"><b>━━━</b></font>', "negative score"),
    ] if color_legend is None else [(f'<font color="{c}"><b>━━━</b></font>', html.escape(m)) for c, m in color_legend]
    if color_legend is None and any(not math.isfinite(e.score) or e.score == 0 for e in edges):
        rows.append((f'<font color="{NEUTRAL}"><b>━━━</b></font>', "zero / NaN score"))
    inputs = {e.input for e in edges}
    if inputs & {"q", "k", "v"}:
        rows += [("━━━", "into query (q)"), ("━ ━ ━", "into key (k)"), ("┈┈┈", "into value (v)")]
    elif merge_qkv:
        rows.append(("q+k+v", "merged per head"))
    rows.append(("width", "∝ |score|"))
    if collapse_heads:
        rows.append(("a<i>L</i>", "heads of layer <i>L</i>, summed"))
    cells = "".join(f'<tr><td align="left">{a}</td><td align="left">{b}</td></tr>' for a, b in rows)
    return (
        '<<table border="1" color="#bbbbbb" cellborder="0" cellspacing="0" cellpadding="2" style="rounded">'
        f'<tr><td colspan="2"><b>legend</b></td></tr>{cells}</table>>'
    )


def resolve_groups(
    graph: Graph, groups: Mapping[str, Iterable[str]] | None, drawn: set[str], collapse_heads: bool
) -> dict[str, list[str]]:
    """Group name -> drawn nodes in it (nodes outside the circuit are dropped; unknown names raise)."""
    if not groups:
        return {}
    valid = set(graph.nodes)
    owner: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for gname, members in groups.items():
        if isinstance(members, str):
            raise ValueError(f"group {gname!r} must be a list of node names, got the string {members!r}")
        kept: list[str] = []
        for n in members:
            if n not in valid:
                raise ValueError(
                    f"group {gname!r}: {n!r} is not a node of this graph; nodes look like "
                    "'input', 'a3.h5', 'm7', 'logits'"
                )
            d = collapsed_node(n) if collapse_heads else n
            if d not in drawn or d in kept:
                continue
            if d in owner:
                raise ValueError(f"node {d!r} is in two groups, {owner[d]!r} and {gname!r}; groups must not overlap")
            owner[d] = gname
            kept.append(d)
        out[gname] = kept
    return out


# ---------------------------------------------------------------------- the dot graph
def check_size(graph: Graph, max_edges: int, force: bool) -> None:
    """Raise ``ValueError`` if the circuit has more than ``max_edges`` edges and ``force`` is false."""
    n = graph.n_circuit_edges
    if n > max_edges and not force:
        raise ValueError(
            f"the circuit has {n} edges, more than max_edges={max_edges}: a diagram that large is unreadable. "
            "Prune it first (e.g. circuits.prune.topn(graph, 200) or `--edges 200` on the command line), "
            "raise max_edges, or pass force=True (CLI: --force) to draw it anyway."
        )


def to_dot(
    graph: Graph,
    *,
    merge_qkv: bool = False,
    collapse_heads: bool = False,
    groups: Mapping[str, Sequence[str]] | None = None,
    title: str | None = None,
    legend: bool = True,
    layer_labels: bool = True,
    max_edges: int = 500,
    force: bool = False,
    edge_colors: Mapping[str, str] | None = None,
    color_legend: Sequence[tuple[str, str]] | None = None,
) -> graphviz.Digraph:
    """A ``graphviz.Digraph`` of the circuit (in-circuit edges and their nodes only).

    Args:
        merge_qkv: one edge per (sender, head) with the q/k/v scores summed.
        collapse_heads: one node ``a{l}`` per layer for its heads (scores summed).
        groups: ``{"name movers": ["a9.h6", "a9.h9"], ...}`` drawn as labelled boxes.
        title: the diagram title; default built from the graph's provenance (model, task,
            method, edge count, faithfulness).
        legend: draw the colour / line-style legend.
        layer_labels: label each rank at the side (``L3 attn``, ``L3 mlp``, ``embed``, ``unembed``).
        max_edges, force: refuse circuits with more than ``max_edges`` edges unless ``force``.
        edge_colors: colour of each edge by name (e.g. by membership when comparing circuits) instead
            of by the sign of its score; a drawn edge that merges several takes its first edge's colour.
        color_legend: ``(colour, meaning)`` rows that replace the legend's score-sign rows.

    Internal helper nodes (rank spine, legend) have names starting with ``_``.
    """
    check_size(graph, max_edges, force)
    edges = drawn_edges(graph, merge_qkv=merge_qkv, collapse_heads=collapse_heads)
    L = graph.n_layers
    # Nodes in topological order of the drawing.
    seen = {n for e in edges for n in (e.sender, e.receiver)}
    nodes = sorted(seen, key=lambda n: (node_stage(n, L), _head_index(n), n))
    group_of = resolve_groups(graph, groups, seen, collapse_heads)
    dot = _new_digraph(title if title is not None else default_title(graph, graph.n_circuit_edges))
    _add_nodes(dot, graph, nodes, group_of, collapse_heads)
    legend_label = _legend_label(edges, collapse_heads, merge_qkv, color_legend) if legend and edges else None
    _add_ranks(dot, nodes, L, layer_labels, legend_label)
    if not edges:
        dot.node("_empty", label="(empty circuit: no in-circuit edges)", shape="plaintext", fontcolor="#777777")
    _add_edges(dot, edges, edge_colors)
    return dot


def _new_digraph(title_text: str) -> graphviz.Digraph:
    dot = graphviz.Digraph(name="circuit")
    dot.attr("graph", rankdir="BT", newrank="true", nodesep="0.22", ranksep="0.42", fontname=FONT, fontsize="13",
             bgcolor="white", labelloc="t", labeljust="c", pad="0.2")
    if title_text:
        dot.attr("graph", label=f"<{_html_lines(title_text, bold_first=True)}>")
    dot.attr("node", fontname=FONT, fontsize="11", height="0.3", width="0.5", margin="0.08,0.03", penwidth="1.0")
    dot.attr("edge", fontname=FONT, fontsize="9", arrowsize="0.55")
    return dot


def _add_nodes(dot: graphviz.Digraph, graph: Graph, nodes: list[str], group_of: dict[str, list[str]],
               collapse_heads: bool) -> None:
    """Every drawn node, the grouped ones inside their labelled boxes."""
    collapsed_counts: dict[str, int] = {}
    if collapse_heads:
        for n in graph.circuit_nodes():
            if _HEAD_RE.match(n):
                c = collapsed_node(n)
                collapsed_counts[c] = collapsed_counts.get(c, 0) + 1

    def add_node(target: graphviz.Digraph, n: str) -> None:
        label, tip = n, n
        if n in collapsed_counts:
            k = collapsed_counts[n]
            label = f"{n} ({k} head{'s' if k != 1 else ''})"
            tip = f"{n}: {k} heads of layer {n[1:]} in the circuit, collapsed"
        target.node(n, label=label, tooltip=tip, **dict(NODE_STYLE[node_kind(n)]))

    grouped = {n for members in group_of.values() for n in members}
    for i, (gname, members) in enumerate(group_of.items()):
        if not members:
            continue
        with dot.subgraph(name=f"cluster_group{i}") as c:
            c.attr(label=gname, style="rounded,filled", fillcolor=GROUP_FILLS[i % len(GROUP_FILLS)],
                   color=GROUP_BORDERS[i % len(GROUP_BORDERS)], fontname=FONT, fontsize="11", fontcolor="#333333",
                   margin="6", labelloc="b")  # with rankdir=BT, "b" puts the label at the top of the box
            for n in members:
                add_node(c, n)
    for n in nodes:
        if n not in grouped:
            add_node(dot, n)


def _add_ranks(dot: graphviz.Digraph, nodes: list[str], L: int, layer_labels: bool, legend_label: str | None) -> None:
    """One rank per occupied stage, chained bottom-to-top by an invisible spine so that layers
    stay in order even when no drawn edge connects them; the legend sits on the lowest rank."""
    stages = sorted({node_stage(n, L) for n in nodes})
    for s in stages:
        with dot.subgraph() as r:
            r.attr(rank="same")
            if layer_labels:
                r.node(f"_rank{s}", label=stage_label(s, L), shape="plaintext", fontsize="9", fontcolor="#888888")
            else:
                r.node(f"_rank{s}", label="", shape="point", width="0", height="0", style="invis")
            for n in nodes:
                if node_stage(n, L) == s:
                    r.node(n)
            if legend_label is not None and s == stages[0]:
                r.node("_legend", label=legend_label, shape="plain", fontsize="9")
    for a, b in zip(stages, stages[1:]):
        dot.edge(f"_rank{a}", f"_rank{b}", style="invis", weight="10")


def _add_edges(dot: graphviz.Digraph, edges: list[DrawnEdge], edge_colors: Mapping[str, str] | None = None) -> None:
    """Colour = sign of the score (or ``edge_colors``), width = |score| relative to the largest, style = q/k/v input."""
    finite = [abs(e.score) for e in edges if math.isfinite(e.score)]
    max_abs = max(finite, default=0.0)
    for i, e in enumerate(edges):
        rel = abs(e.score) / max_abs if max_abs > 0 and math.isfinite(e.score) else 0.0
        color = edge_colors[e.names[0]] if edge_colors and e.names[0] in edge_colors else edge_color(e.score, rel)
        dot.edge(e.sender, e.receiver, id=f"e{i}", color=color,
                 penwidth=f"{penwidth(e.score, max_abs):.2f}", style=QKV_STYLE[e.input], tooltip=edge_tooltip(e))


def edge_tooltip(e: DrawnEdge) -> str:
    """Hover text: the edge name (or what it merges) and its score."""
    if len(e.names) == 1:
        return f"{e.names[0]}  score {fmt_score(e.score)}"
    recv = f"{e.receiver}<{e.input}>" if e.input else e.receiver
    return f"{e.sender}->{recv}  score {fmt_score(e.score)} (sum of {len(e.names)} edges)"


def _head_index(name: str) -> int:
    m = _HEAD_RE.match(name)
    return int(m.group(2)) if m else -1


# ---------------------------------------------------------------------- binary output
def require_dot() -> None:
    """Raise ``RuntimeError`` with install instructions if Graphviz's ``dot`` is not on PATH."""
    if shutil.which("dot") is None:
        raise RuntimeError(_DOT_MISSING)


def pipe_bytes(dot: graphviz.Digraph, fmt: str) -> bytes:
    """Run ``dot`` and return the output bytes; clear errors when ``dot`` is missing or fails."""
    require_dot()
    try:
        return dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound as exc:
        raise RuntimeError(_DOT_MISSING) from exc
    except graphviz.CalledProcessError as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else str(exc.stderr)
        raise RuntimeError(f"Graphviz `dot` failed to render the circuit: {err.strip() or exc}") from exc


def render(
    graph: Graph,
    path: str | Path,
    format: str | None = None,
    *,
    overwrite: bool = False,
    dpi: int = 150,
    **kw: Any,
) -> Path:
    """Draw the circuit to ``path`` (svg, png or pdf; from the suffix unless ``format`` is given).

    The file is written atomically (rendered in memory, then renamed into place); the parent
    folder is created. ``dpi`` applies to PNG. Other keyword arguments go to :func:`to_dot`.
    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is false, ``RuntimeError``
    if Graphviz's ``dot`` program is missing.
    """
    path = Path(path)
    fmt = resolve_format(path, format, DIAGRAM_FORMATS, "render")
    check_target(path, overwrite)
    dot = to_dot(graph, **kw)
    if fmt == "png":
        dot.attr("graph", dpi=str(int(dpi)))
    data = pipe_bytes(dot, fmt)
    return atomic_write_bytes(path, data, overwrite=overwrite)


def svg_text(graph: Graph, **kw: Any) -> str:
    """The circuit as an SVG document (string)."""
    return pipe_bytes(to_dot(graph, **kw), "svg").decode("utf-8")
