"""Output formats by file suffix: the one table of what can be written and read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DATA_FORMATS: tuple[str, ...] = ("json", "graphml", "gexf", "csv", "dot")
"""Files other tools read (no Graphviz needed)."""
DIAGRAM_FORMATS: tuple[str, ...] = ("svg", "png", "pdf")
"""Diagrams drawn by Graphviz's ``dot``."""
IMAGE_FORMATS: tuple[str, ...] = DIAGRAM_FORMATS + ("html",)
"""Diagrams and the HTML explorer (drawn in the browser; needs no Graphviz)."""
FORMATS: tuple[str, ...] = DATA_FORMATS + IMAGE_FORMATS
LOADABLE: tuple[str, ...] = ("json", "graphml", "gexf", "csv")
_SUFFIXES: dict[str, str] = {"gv": "dot", "xml": "graphml", "htm": "html"}


def resolve_format(path: str | Path, format: str | None, valid: Sequence[str], action: str = "write") -> str:
    """``format`` if given, else the suffix of ``path`` (``.gv`` = dot, ``.htm`` = html); must be in ``valid``."""
    fmt = (format or Path(path).suffix.lstrip(".")).lower()
    fmt = _SUFFIXES.get(fmt, fmt)
    if not fmt:
        raise ValueError(f"cannot tell the format of {str(path)!r} (no suffix); use one of {', '.join(valid)}")
    if fmt not in valid:
        raise ValueError(f"cannot {action} format {fmt!r}; valid formats: {', '.join(valid)}")
    return fmt
