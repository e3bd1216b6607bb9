"""How a :class:`~circuits.graph.Graph` and a :class:`~circuits.evaluation.CircuitReport` show in Jupyter.

``circuits`` registers :func:`to_html` with IPython's HTML formatter when it is imported inside IPython
(see ``circuits/__init__.py``), so the last expression of a cell that is a graph or a report displays
itself: a circuit as its Graphviz diagram (:func:`circuits.render.to_dot`), or, when Graphviz's
``dot`` is missing or the circuit is too large or empty, as a text table of its strongest edges; a
report as a table of its numbers. Nothing here runs until something is displayed.
"""

from __future__ import annotations

import html
import math
import shutil
from typing import Any

import torch

from ..evaluation.report import CircuitReport
from ..graph import Graph
from .diagram import svg_text

MAX_DRAWN_EDGES = 200
"""Circuits with more in-circuit edges than this show as a table instead of a diagram."""
TABLE_ROWS = 15
"""Edges listed in the text table (strongest |score| first)."""


def _inline_svg(svg: str) -> str:
    """An SVG document without its XML prologue, to sit inside HTML."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def graph_summary(graph: Graph) -> str:
    """One line: shape, circuit size, method and model when known."""
    p = graph.provenance
    where = " ".join(x for x in (p.method and f"method {p.method}", p.model and f"model {p.model}") if x)
    return (f"{graph.n_layers} layers x {graph.n_heads} heads: {graph.n_circuit_edges} of {graph.n_edges} edges in "
            f"the circuit, {len(graph.circuit_nodes())} nodes" + (f" ({where})" if where else ""))


def graph_table(graph: Graph, rows: int = TABLE_ROWS) -> list[tuple[str, float]]:
    """The ``rows`` in-circuit edges with the largest |score| (NaN last), as ``(name, score)``."""
    idx = graph.in_circuit.nonzero().flatten()
    s = graph.scores[idx].abs().nan_to_num(nan=-1.0)
    top = idx[torch.argsort(s, descending=True, stable=True)[:rows]]
    return list(zip(graph.edge_names(top), graph.scores[top].tolist()))


def graph_text(graph: Graph, rows: int = TABLE_ROWS) -> str:
    """Plain-text form of :func:`graph_table` under :func:`graph_summary`."""
    lines = [graph_summary(graph)]
    lines += [f"  {name:<28} {score: .4g}" for name, score in graph_table(graph, rows)]
    return "\n".join(lines)


def graph_html(graph: Graph, max_edges: int = MAX_DRAWN_EDGES) -> str:
    """The circuit's diagram as inline SVG, or an HTML table when it cannot or should not be drawn."""
    caption = f"<p><code>{html.escape(graph_summary(graph))}</code></p>"
    if 0 < graph.n_circuit_edges <= max_edges and shutil.which("dot") is not None:
        try:
            return f'<div style="max-width:100%;overflow:auto">{_inline_svg(svg_text(graph))}</div>{caption}'
        except RuntimeError:  # dot failed: fall back to the table
            pass
    why = ("no Graphviz `dot` to draw it" if shutil.which("dot") is None else
           "empty circuit" if graph.n_circuit_edges == 0 else f"more than {max_edges} edges to draw")
    body = "".join(f"<tr><td><code>{html.escape(n)}</code></td><td>{_num(s)}</td></tr>" for n, s in graph_table(graph))
    return (f"{caption}<table><tr><th>edge ({why}; strongest first)</th><th>score</th></tr>{body}</table>"
            if body else caption)


def _num(x: Any) -> str:
    if isinstance(x, float):
        return "n/a" if not math.isfinite(x) else f"{x:.4g}"
    return html.escape(str(x))


def report_rows(report: CircuitReport) -> list[tuple[str, str]]:
    """``(label, value)`` rows of a report's main numbers."""
    ci = report.faithfulness_ci
    return [
        ("model / task", f"{report.model} / {report.task}"),
        ("method", report.method),
        ("circuit", f"{report.n_edges} edges, {report.n_nodes} nodes"),
        ("metric", f"{report.metric}: full {_num(report.m_full)}, circuit {_num(report.m_circuit)}, "
                   f"empty {_num(report.m_empty)}"),
        ("faithfulness", _num(report.faithfulness) + ("" if ci is None else f" (95% CI {_num(ci[0])} to {_num(ci[1])})")),
        ("KL to full", _num(report.kl_to_full)),
        ("accuracy", f"{_num(report.accuracy)} (full model {_num(report.accuracy_full)})"),
        ("examples / ablation", f"{report.n_examples} / {report.ablation}"),
    ]


def report_html(report: CircuitReport) -> str:
    """An HTML table of :func:`report_rows`."""
    rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in report_rows(report))
    return f"<table>{rows}</table>"


def to_html(obj: Any) -> str | None:
    """The HTML IPython shows for a Graph or a CircuitReport (None for anything else)."""
    if isinstance(obj, Graph):
        return graph_html(obj)
    if isinstance(obj, CircuitReport):
        return report_html(obj)
    return None


__all__ = ["MAX_DRAWN_EDGES", "graph_html", "graph_summary", "graph_table", "graph_text", "report_html", "report_rows",
           "to_html"]
