"""One diagram of several circuits of a model: their union, each edge coloured by which circuits hold it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import graphviz
import torch

from ..graph import Graph
from ..io import atomic_write_bytes, check_target
from .diagram import pipe_bytes, to_dot

SHARED = "#222222"
"""Colour of edges in every circuit."""
SOME = "#b0b0b0"
"""Colour of edges in more than one circuit but not in all (three or more circuits)."""
UNIQUE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
"""Colours of edges found by one circuit only, in the order of the circuits (cycled)."""


def membership_colors(graphs: Sequence[Graph], names: Sequence[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``({edge name: colour}, legend rows)`` for the union of ``graphs``: shared, unique to one, or in some."""
    held = torch.stack([g.in_circuit for g in graphs])  # [K, E]
    count = held.sum(0)
    colors: dict[str, str] = {}
    legend = [(SHARED, f"in all {len(graphs)} circuits")]
    edge_names = graphs[0].edge_names()
    for i, name in enumerate(names):
        color = UNIQUE[i % len(UNIQUE)]
        only = (held[i] & (count == 1)).nonzero().flatten().tolist()
        colors.update({edge_names[e]: color for e in only})
        legend.append((color, f"only in {name}"))
    colors.update({edge_names[e]: SHARED for e in (count == len(graphs)).nonzero().flatten().tolist()})
    some = ((count > 1) & (count < len(graphs))).nonzero().flatten().tolist()
    colors.update({edge_names[e]: SOME for e in some})
    if len(graphs) > 2:
        legend.append((SOME, "in some, not all"))
    return colors, legend


def compare_dot(graphs: Sequence[Graph], names: Sequence[str], **kw: Any) -> graphviz.Digraph:
    """The union of the circuits drawn by :func:`circuits.render.to_dot`, coloured by membership.

    Widths follow the first circuit's scores; other keyword arguments go to ``to_dot``.
    """
    keep = torch.stack([g.in_circuit for g in graphs]).any(0)
    union = graphs[0].with_circuit(keep)
    colors, legend = membership_colors(graphs, names)
    title = kw.pop("title", f"{len(graphs)} circuits: union of {int(keep.sum())} edges")
    return to_dot(union, edge_colors=colors, color_legend=legend, title=title, **kw)


def render_compare(graphs: Sequence[Graph], names: Sequence[str], path: str | Path, overwrite: bool = False,
                   **kw: Any) -> Path:
    """Draw :func:`compare_dot` to an SVG/PNG/PDF file (from the suffix), atomically."""
    path = Path(path)
    check_target(path, overwrite)
    data = pipe_bytes(compare_dot(graphs, names, **kw), path.suffix.lstrip(".").lower() or "svg")
    return atomic_write_bytes(path, data, overwrite=overwrite)


__all__ = ["compare_dot", "membership_colors", "render_compare"]
