"""Files other tools read: JSON (our schema), GraphML, GEXF, CSV and Graphviz dot source.

:func:`save` writes a :class:`~circuits.graph.Graph` in one of :data:`FORMATS` (chosen from the
file suffix or ``format=``); :func:`load` reads JSON, GraphML, GEXF and CSV back into an
identical graph (same structure, scores, circuit mask and metadata). Every file is written
atomically, parent folders are created, and an existing file is only replaced with
``overwrite=True``. None of this needs Graphviz's ``dot`` program (only SVG/PNG/PDF, which
:func:`save` hands to :func:`circuits.render.render`, do). See ``docs/formats.md``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as xml_escape

import torch

from ..graph import FORMAT_NAME, FORMAT_VERSION, Graph, GraphLayout, Provenance, layout_for, split_receiver
from ..io import atomic_write_text, check_target
from .formats import FORMATS, IMAGE_FORMATS, LOADABLE, resolve_format
from .mib import from_mib_dict, is_mib

CSV_COLUMNS: tuple[str, ...] = ("edge", "sender", "receiver", "input", "score", "in_circuit")
CSV_HEADER_PREFIX = "# circuits.graph "


# ---------------------------------------------------------------------- format dispatch
def save(
    graph: Graph,
    path: str | Path,
    format: str | None = None,
    *,
    overwrite: bool = False,
    circuit_only: bool = False,
    **render_options: Any,
) -> Path:
    """Write ``graph`` to ``path`` as json / graphml / gexf / csv / dot (or svg / png / pdf / html).

    Args:
        format: overrides the file suffix.
        overwrite: replace an existing file (otherwise ``FileExistsError``).
        circuit_only: GraphML/GEXF/CSV keep only in-circuit edges (smaller files; loading
            them back gives score 0 to the dropped edges). JSON always stores every edge.
        render_options: for dot and the image formats, passed to :func:`circuits.render.to_dot`
            (``merge_qkv``, ``groups``, ``max_edges``, ...).

    Returns the path written.
    """
    fmt = resolve_format(path, format, FORMATS, "save")
    path = Path(path)
    if render_options and fmt not in ("dot",) + IMAGE_FORMATS:
        raise TypeError(f"options {sorted(render_options)} only apply to dot/svg/png/pdf/html, not {fmt}")
    if circuit_only and fmt == "json":
        raise ValueError("the JSON format always stores every edge (in_circuit marks the circuit); drop circuit_only")
    check_target(path, overwrite)
    if fmt in IMAGE_FORMATS:
        from .diagram import render
        from .html import render_html

        if fmt == "html":
            return render_html(graph, path, overwrite=overwrite, **render_options)
        return render(graph, path, fmt, overwrite=overwrite, **render_options)
    if fmt == "json":
        return graph.save_json(path, overwrite=overwrite)
    if fmt == "csv":
        return atomic_write_text(path, to_csv_text(graph, circuit_only=circuit_only), overwrite=overwrite)
    if fmt == "dot":
        from .diagram import to_dot

        return atomic_write_text(path, to_dot(graph, **render_options).source, overwrite=overwrite)
    if fmt == "graphml":
        return atomic_write_text(path, to_graphml_text(graph, circuit_only=circuit_only), overwrite=overwrite)
    # gexf
    return atomic_write_text(path, to_gexf_text(graph, circuit_only=circuit_only), overwrite=overwrite)


def load(path: str | Path, format: str | None = None) -> Graph:
    """Read a graph written by :func:`save` (json, graphml, gexf or csv), or an EAP-IG / MIB JSON file
    (recognised by its ``cfg``, ``nodes`` and ``edges`` keys, see :mod:`circuits.render.mib`)."""
    fmt = resolve_format(path, format, LOADABLE, "load")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"graph file {path} does not exist")
    if fmt == "json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return from_mib_dict(data) if is_mib(data) else Graph.from_dict(data)
    if fmt == "csv":
        return from_csv_text(path.read_text(encoding="utf-8"))
    import networkx as nx

    if fmt == "graphml":
        g = nx.read_graphml(path)
        return from_export_networkx(g, header=None)
    return from_export_networkx(nx.read_gexf(path), header=_gexf_header(path))


# ---------------------------------------------------------------------- shared header
def header(graph: Graph, circuit_only: bool = False) -> dict[str, Any]:
    """Graph-level fields stored by every file format (JSON-serialisable)."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "n_layers": graph.n_layers,
        "n_heads": graph.n_heads,
        "parallel_attn_mlp": graph.parallel_attn_mlp,
        "circuit_only": circuit_only,
        "meta": graph.provenance.to_dict(),
    }


def _header_layout(h: dict[str, Any], source: str) -> tuple[GraphLayout, Provenance]:
    """The layout and provenance a file's header describes (checked)."""
    if h.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise ValueError(f"{source}: not a circuits graph (format={h.get('format')!r}, expected {FORMAT_NAME!r})")
    if int(h.get("version", FORMAT_VERSION)) > FORMAT_VERSION:
        raise ValueError(f"{source}: version {h['version']} is newer than this circuits ({FORMAT_VERSION}); upgrade circuits")
    for k in ("n_layers", "n_heads"):
        if k not in h:
            raise ValueError(f"{source}: missing {k!r}; the file was not written by circuits.save (or was edited)")
    layout = layout_for(int(h["n_layers"]), int(h["n_heads"]), _as_bool(h.get("parallel_attn_mlp", False)))
    meta = h.get("meta", {})
    return layout, Provenance.from_dict(json.loads(meta) if isinstance(meta, str) else meta)


def _as_bool(x: Any) -> bool:
    if isinstance(x, bool):
        return x
    if isinstance(x, (int, float)):
        return bool(x)
    s = str(x).strip().lower()
    if s in ("true", "1", "yes", "y", "t"):
        return True
    if s in ("false", "0", "no", "n", "f", ""):
        return False
    raise ValueError(f"not a boolean: {x!r}")


def _as_float(x: Any) -> float:
    if x is None or (isinstance(x, str) and x.strip() == ""):
        return float("nan")
    return float(x)


# ---------------------------------------------------------------------- networkx (GraphML / GEXF)
def to_export_networkx(graph: Graph, circuit_only: bool = False):
    """``graph.to_networkx()`` with GraphML/GEXF-safe attributes only (str, int, float, bool).

    Graph attributes: ``format``, ``version``, ``n_layers``, ``n_heads``, ``parallel_attn_mlp``,
    ``circuit_only``, ``meta`` (a JSON string). Nodes: ``label``, ``kind``, ``layer``, ``head``.
    Edges (keyed ``q``/``k``/``v``/``in``): ``name``, ``input``, ``score``, ``weight`` (= |score|,
    for tools that size edges by weight), ``in_circuit``.
    """
    g = graph.to_networkx(circuit_only=circuit_only)
    h = header(graph, circuit_only)
    g.graph.clear()
    g.graph.update({k: v for k, v in h.items() if k != "meta"})
    g.graph["meta"] = json.dumps(graph.provenance.to_dict(), sort_keys=True)
    for n, data in g.nodes(data=True):
        data["label"] = n
    for _, _, data in g.edges(data=True):
        s = float(data["score"])
        data["weight"] = abs(s) if math.isfinite(s) else 0.0
    return g


def from_export_networkx(g, header: dict[str, Any] | None = None) -> Graph:
    """Inverse of :func:`to_export_networkx`; ``header`` overrides ``g.graph`` (GEXF keeps it elsewhere)."""
    h = dict(g.graph if header is None else header)
    layout, prov = _header_layout(h, "networkx graph")
    return Graph.from_networkx(g, prov, layout=layout, as_float=_as_float, as_bool=_as_bool)


_XSD_FLOATS = {"nan": "NaN", "inf": "INF", "-inf": "-INF"}


def to_graphml_text(graph: Graph, circuit_only: bool = False) -> str:
    """GraphML text (edge ids are edge names), with XML-Schema spellings of booleans and NaN.

    networkx writes Python's ``True``/``nan``; GraphML readers in other languages expect
    ``true``/``NaN`` (as the GraphML and XML Schema specs spell them), so those are fixed up.
    """
    import networkx as nx

    g = to_export_networkx(graph, circuit_only=circuit_only)
    text = "\n".join(nx.generate_graphml(g, edge_id_from_attribute="name")) + "\n"
    typed = dict(re.findall(r'<key id="([^"]+)" for="[^"]+" attr\.name="[^"]+" attr\.type="(boolean|double|float)"', text))

    def fix(m: re.Match) -> str:
        key, value = m.group(1), m.group(2)
        if typed.get(key) == "boolean":
            value = value.lower()
        elif key in typed:
            value = _XSD_FLOATS.get(value, value)
        return f'<data key="{key}">{value}</data>'

    return re.sub(r'<data key="([^"]+)">([^<]*)</data>', fix, text)


def to_gexf_text(graph: Graph, circuit_only: bool = False) -> str:
    """GEXF 1.2 text; the graph header (sizes, meta) is JSON in ``<meta><description>``."""
    import networkx as nx

    g = to_export_networkx(graph, circuit_only=circuit_only)
    for _, _, data in g.edges(data=True):
        data["id"] = data["name"]  # unique, readable edge ids
    g.graph.clear()  # the GEXF writer ignores graph attributes; they go into <description>
    text = "\n".join(nx.generate_gexf(g))
    text = re.sub(r'value="(nan|inf|-inf)"', lambda m: f'value="{_XSD_FLOATS[m.group(1)]}"', text)
    desc = f"<description>{xml_escape(json.dumps(header(graph, circuit_only), sort_keys=True))}</description>"
    text, n = re.subn(r"(</creator>)", lambda m: m.group(1) + desc, text, count=1)
    if n != 1:  # pragma: no cover - networkx always writes <creator>
        raise RuntimeError("unexpected GEXF output from networkx (no <creator> element)")
    return text + "\n"


def _gexf_header(path: Path) -> dict[str, Any]:
    root = ET.parse(path).getroot()
    desc = root.find("{*}meta/{*}description")
    if desc is None or not (desc.text or "").strip():
        raise ValueError(
            f"{path}: no circuits header in <meta><description>; only GEXF files written by "
            "circuits.export.save can be loaded back"
        )
    try:
        return json.loads(desc.text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the <meta><description> is not a circuits header ({exc})") from None


# ---------------------------------------------------------------------- CSV
def to_csv_text(graph: Graph, circuit_only: bool = False) -> str:
    """CSV text: one ``# circuits.graph {json header}`` line, then ``edge,sender,receiver,input,score,in_circuit``.

    One row per edge (or per in-circuit edge with ``circuit_only``); ``receiver`` is the node
    (``a1.h2``), ``input`` the head input (``q``/``k``/``v``, empty otherwise); ``score`` is
    written with full precision (``nan`` for NaN), ``in_circuit`` as ``true``/``false``.
    """
    buf = io.StringIO()
    buf.write(CSV_HEADER_PREFIX + json.dumps(header(graph, circuit_only), sort_keys=True) + "\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    idx = graph.in_circuit.nonzero().flatten() if circuit_only else torch.arange(graph.n_edges)
    for name, score, flag in zip(graph.edge_names(idx), graph.scores[idx].tolist(), graph.in_circuit[idx].tolist()):
        sender, recv = name.split("->", 1)
        node, inp = split_receiver(recv)
        w.writerow((name, sender, node, inp, repr(float(score)), "true" if flag else "false"))
    return buf.getvalue()


def from_csv_text(text: str) -> Graph:
    """Inverse of :func:`to_csv_text` (needs its ``# circuits.graph`` header line)."""
    lines = text.splitlines()
    head_lines = [ln for ln in lines if ln.startswith(CSV_HEADER_PREFIX)]
    if not head_lines:
        raise ValueError(
            "CSV has no '# circuits.graph {...}' header line with n_layers/n_heads; only CSV files "
            "written by circuits.export.save can be loaded back"
        )
    h = json.loads(head_lines[0][len(CSV_HEADER_PREFIX):])
    layout, prov = _header_layout(h, "CSV")
    rows = csv.DictReader(ln for ln in lines if not ln.startswith("#"))
    missing = {"score", "in_circuit"} - set(rows.fieldnames or ())
    if missing or not ({"edge"} <= set(rows.fieldnames or ()) or {"sender", "receiver"} <= set(rows.fieldnames or ())):
        raise ValueError(f"CSV columns must include {', '.join(CSV_COLUMNS)}; got {rows.fieldnames}")
    names, scores, flags = [], [], []
    for row in rows:
        name = row.get("edge") or ""
        if not name:
            inp = row.get("input") or ""
            name = f"{row['sender']}->{row['receiver']}" + (f"<{inp}>" if inp else "")
        names.append(name)
        scores.append(_as_float(row["score"]))
        flags.append(_as_bool(row["in_circuit"]))
    return Graph.from_edges(layout, names, scores, flags, prov)


__all__ = [
    "CSV_COLUMNS",
    "save",
    "load",
    "header",
    "to_export_networkx",
    "from_export_networkx",
    "to_graphml_text",
    "to_gexf_text",
    "to_csv_text",
    "from_csv_text",
]
