"""The circuit as a self-contained HTML page: the SVG diagram with hover tool-tips and a table of top edges."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

from ..graph import Graph
from ..io import atomic_write_text, check_target
from .diagram import NEGATIVE, POSITIVE, default_title, drawn_edges, edge_tooltip, fmt_score, pipe_bytes, to_dot

_EDGE_TITLE_RE = re.compile(r'(<g id="(e\d+)" class="edge">\s*<title>)(.*?)(</title>)', re.S)

_HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.2em; margin-bottom: 0.2em; }}
.meta {{ color: #555; font-size: 0.9em; margin-bottom: 1em; }}
.diagram svg {{ max-width: 100%; height: auto; }}
g.edge:hover path {{ stroke-opacity: 1; stroke-width: 6; }}
g.edge:hover polygon {{ fill-opacity: 1; }}
table {{ border-collapse: collapse; font-size: 0.9em; margin-top: 1em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.2em 0.8em; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.pos {{ color: {pos}; }} .neg {{ color: {neg}; }}
</style>
</head>
<body>
<h1>{title}</h1>
<div class="meta">{meta}</div>
<p class="meta">Hover over an edge to see its name and score.</p>
<div class="diagram">
{svg}
</div>
<h2 style="font-size:1em">Top {n_top} of {n_edges} circuit edges by |score|</h2>
<table>
<tr><th>#</th><th>edge</th><th>score</th></tr>
{rows}
</table>
</body>
</html>
"""


def top_edges(graph: Graph, n: int = 20) -> list[tuple[str, float]]:
    """The ``n`` in-circuit edges with the largest |score| (NaN last), as (name, score)."""
    idx = graph.in_circuit.nonzero().flatten()
    names = graph.edge_names(idx)
    scores = graph.scores[idx].tolist()
    pairs = sorted(zip(names, scores), key=lambda p: -abs(p[1]) if math.isfinite(p[1]) else math.inf)
    return pairs[:n]


def html_page(graph: Graph, *, top: int = 20, **kw: Any) -> str:
    """A self-contained HTML page: the circuit's SVG (edge tooltips) and a table of its top edges."""
    svg = pipe_bytes(to_dot(graph, **kw), "svg").decode("utf-8")
    svg = svg[svg.find("<svg"):] if "<svg" in svg else svg  # drop the XML prolog and DOCTYPE
    edges = drawn_edges(graph, merge_qkv=kw.get("merge_qkv", False), collapse_heads=kw.get("collapse_heads", False))
    tips = {f"e{i}": edge_tooltip(e) for i, e in enumerate(edges)}

    def retitle(m: re.Match) -> str:
        # Put name + score in the edge's <title>, which every browser shows on hover.
        tip = tips.get(m.group(2))
        return m.group(0) if tip is None else m.group(1) + html.escape(tip, quote=False) + m.group(4)

    svg = _EDGE_TITLE_RE.sub(retitle, svg)
    title = kw.get("title") or default_title(graph, graph.n_circuit_edges).replace("\n", " — ")
    meta = " · ".join(
        f"{html.escape(str(k))}: {html.escape(str(v))}"
        for k, v in graph.provenance.to_dict().items()
        if isinstance(v, (str, int, float, bool))
    )
    pairs = top_edges(graph, top)
    rows = "\n".join(
        f'<tr><td>{i + 1}</td><td><code>{html.escape(name)}</code></td>'
        f'<td class="num {"pos" if s > 0 else "neg" if s < 0 else ""}">{fmt_score(s)}</td></tr>'
        for i, (name, s) in enumerate(pairs)
    )
    return _HTML_TEMPLATE.format(
        title=html.escape(title), meta=meta, svg=svg, n_top=len(pairs), n_edges=graph.n_circuit_edges,
        rows=rows, pos=POSITIVE, neg=NEGATIVE,
    )


def render_html(graph: Graph, path: str | Path, *, overwrite: bool = False, top: int = 20, **kw: Any) -> Path:
    """Write :func:`html_page` to ``path`` atomically (works offline: nothing is fetched)."""
    path = Path(path)
    check_target(path, overwrite)
    return atomic_write_text(path, html_page(graph, top=top, **kw), overwrite=overwrite)
