"""Plots: faithfulness curves, ROC curves and path-patching heatmaps (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..evaluation.curve import Curve
from ..evaluation.roc import RocResult
from ..io import atomic_path

__all__ = ["plot_curves", "plot_roc", "plot_heatmap"]


def _figure_format(path: Path) -> str:
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise ValueError(f"plot path must end in .png, .svg or .pdf, got {path.name!r}")
    return fmt


def _save_figure(fig: Any, path: str | Path) -> Path:
    p = Path(path)
    fmt = _figure_format(p)
    with atomic_path(p) as tmp:
        fig.savefig(tmp, format=fmt, bbox_inches="tight", dpi=150)
    return p


def _new_figure(w: float = 6.4, h: float = 4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)  # Agg canvas: no display, no pyplot global state
    return fig


def plot_curves(curves: Mapping[str, Curve], path: str | Path, title: str | None = None) -> Path:
    """Faithfulness vs edge fraction for several methods on one plot (log-scaled ``k`` axis for
    readability; the areas in the legend are on the linear axis, as defined). PNG/SVG/PDF by suffix."""
    if not curves:
        raise ValueError("no curves to plot")
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, c in curves.items():
        ax.plot(c.fractions, c.faithfulness, marker="o", ms=3, label=f"{name} ({c.kind} {c.area:.3f})")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of edges k (log scale)")
    ax.set_ylabel("normalized faithfulness f")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save_figure(fig, path)


def plot_roc(results: Mapping[str, RocResult], path: str | Path, title: str | None = None) -> Path:
    """ROC curves of several methods with their AUC in the legend. PNG/SVG/PDF by suffix."""
    if not results:
        raise ValueError("no ROC results to plot")
    fig = _new_figure(5.2, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    for name, r in results.items():
        ax.plot(r.fpr, r.tpr, drawstyle="default", label=f"{name} (AUC {r.auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save_figure(fig, path)


def plot_heatmap(grid: torch.Tensor, path: str | Path, title: str) -> Path:
    """A layer x head grid of metric changes (path patching), diverging colours centred on 0."""
    fig = _new_figure(1 + 0.5 * grid.shape[1], 1 + 0.4 * grid.shape[0])
    ax = fig.add_subplot(1, 1, 1)
    lim = float(torch.nan_to_num(grid, nan=0.0).abs().max()) or 1.0
    im = ax.imshow(grid.numpy(), cmap="RdBu", vmin=-lim, vmax=lim, origin="lower")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="metric change")
    fig.tight_layout()
    return _save_figure(fig, path)
