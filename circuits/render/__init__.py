"""Render and export: Graphviz diagrams, the interactive explorer, the static HTML page, plots, and files other tools read."""

from .diagram import render, svg_text, to_dot
from .explorer import explorer_data, explorer_page, render_explorer
from .export import load, save
from .formats import DATA_FORMATS, DIAGRAM_FORMATS, FORMATS, IMAGE_FORMATS, LOADABLE, resolve_format
from .html import html_page, render_html
from .plots import plot_curves, plot_heatmap, plot_roc

__all__ = [
    "DATA_FORMATS",
    "html_page",
    "DIAGRAM_FORMATS",
    "explorer_data",
    "explorer_page",
    "FORMATS",
    "IMAGE_FORMATS",
    "LOADABLE",
    "load",
    "plot_curves",
    "plot_heatmap",
    "plot_roc",
    "render",
    "render_explorer",
    "render_html",
    "resolve_format",
    "save",
    "svg_text",
    "to_dot",
]
