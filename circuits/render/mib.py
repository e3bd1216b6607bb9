"""EAP-IG / MIB graph files: the JSON that EAP-IG's ``Graph.to_json`` writes and ``Graph.from_json`` reads.

A file is one object with three keys (``docs/formats.md``)::

    {"cfg":   {"n_layers": 12, "n_heads": 12, "parallel_attn_mlp": false, "d_model": 768},
     "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": false}, ..., "logits": {"in_graph": true}},
     "edges": {"input->a0.h0<q>": {"score": -0.0003, "in_graph": false}, ...}}

Node and edge names are the ones :class:`~circuits.graph.GraphLayout` uses (both follow EAP-IG), so a
file maps onto a :class:`~circuits.graph.Graph` edge for edge. Only edge-level files are read: node
scores are ignored (a node's ``in_graph`` follows from its edges) and neuron-level entries
(``neurons``, ``neurons_scores``) are refused. ``d_model`` is not part of the edge graph; it is kept
in the provenance (``meta.d_model``) so that a file read and written back keeps it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..graph import Graph, GraphLayout, Provenance, layout_for
from ..io import atomic_write_text

MIB_KEYS: tuple[str, str, str] = ("cfg", "nodes", "edges")
"""The top-level keys of an EAP-IG / MIB graph file (how :func:`is_mib` recognises one)."""
NEURON_KEYS: tuple[str, ...] = ("neurons", "neurons_scores", "neurons_in_graph")
"""Neuron-level entries EAP-IG may write (per node, or at the top level of its ``.pt`` dicts): not supported."""
SOURCE_FORMAT = "eap-ig"


def is_mib(d: Any) -> bool:
    """Whether a parsed JSON value looks like an EAP-IG / MIB graph file (``cfg``, ``nodes``, ``edges`` objects)."""
    return isinstance(d, dict) and all(isinstance(d.get(k), dict) for k in MIB_KEYS)


def mib_layout(cfg: Mapping[str, Any]) -> GraphLayout:
    """The layout an EAP-IG ``cfg`` describes (``n_layers``, ``n_heads``, optional ``parallel_attn_mlp``)."""
    for k in ("n_layers", "n_heads"):
        v = cfg.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"EAP-IG file: cfg.{k} must be a positive whole number, got {v!r}")
    parallel = cfg.get("parallel_attn_mlp", False)
    if not isinstance(parallel, bool):
        raise ValueError(f"EAP-IG file: cfg.parallel_attn_mlp must be true or false, got {parallel!r}")
    return layout_for(cfg["n_layers"], cfg["n_heads"], parallel)


def _refuse_neurons(d: Mapping[str, Any]) -> None:
    top = [k for k in NEURON_KEYS if k in d]
    per_node = next((n for n, v in d["nodes"].items() if isinstance(v, dict) and any(k in v for k in NEURON_KEYS)), None)
    if top or per_node is not None:
        where = f"key {top[0]!r}" if top else f"node {per_node!r} has neuron entries"
        raise ValueError(f"EAP-IG file has neuron-level entries ({where}); neuron-level circuits are not supported: "
                         "circuits reads edge-level files (cfg, nodes' in_graph, edges' score and in_graph)")


def from_mib_dict(d: Mapping[str, Any]) -> Graph:
    """A :class:`Graph` from a parsed EAP-IG / MIB file; edges the file does not list score 0, out of the circuit.

    ``score`` may be missing or null (NaN here: a binary circuit without scores); ``in_graph`` is required.
    """
    if not is_mib(d):
        raise ValueError(f"not an EAP-IG graph file: needs the objects {', '.join(MIB_KEYS)}")
    _refuse_neurons(d)
    layout = mib_layout(d["cfg"])
    names, scores, flags = [], [], []
    for name, info in d["edges"].items():
        if not isinstance(info, dict) or not isinstance(info.get("in_graph"), bool):
            raise ValueError(f"EAP-IG file: edge {name!r} must be an object with a boolean in_graph")
        score = info.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise ValueError(f"EAP-IG file: edge {name!r} has a score that is not a number: {score!r}")
        names.append(name)
        scores.append(float("nan") if score is None else float(score))
        flags.append(info["in_graph"])
    extra: dict[str, Any] = {"source_format": SOURCE_FORMAT}
    if isinstance(d["cfg"].get("d_model"), int):
        extra["d_model"] = d["cfg"]["d_model"]
    try:
        return Graph.from_edges(layout, names, scores, flags, Provenance(extra=extra))
    except ValueError as err:
        raise ValueError(f"EAP-IG file: its edges do not fit its cfg ({layout.n_layers} layers x {layout.n_heads} "
                         f"heads): {err}") from None


def edge_order(layout: GraphLayout) -> torch.Tensor:
    """``[E]`` edge indices in the order EAP-IG's ``Graph.from_model`` creates them.

    EAP-IG adds a layer's attention edges (every upstream sender, then head, then q/k/v), then its
    MLP's, then the logits'; in a parallel block each sender's q/k/v edges are followed by its MLP
    edge. That is: sorted by the residual stage the receiver reads, then sender, then receiver.
    """
    stage = layout.receiver_time[layout.edge_receiver]
    key = (stage * layout.n_senders + layout.edge_sender) * layout.n_receivers + layout.edge_receiver
    return torch.argsort(key)


def to_mib_dict(graph: Graph, d_model: int | None = None) -> dict[str, Any]:
    """EAP-IG's ``to_json`` object for ``graph``: every node and edge, scores (null for NaN) and ``in_graph``.

    A node is ``in_graph`` when an in-circuit edge touches it (``logits`` always, as in EAP-IG). ``d_model`` (EAP-IG's ``from_json``
    needs it) defaults to the one recorded when the graph was read from such a file.
    """
    d_model = d_model if d_model is not None else graph.provenance.extra.get("d_model")
    if d_model is None:
        raise ValueError("an EAP-IG file needs cfg.d_model (EAP-IG's Graph.from_json reads it); pass d_model=")
    cfg = {"n_layers": graph.n_layers, "n_heads": graph.n_heads, "parallel_attn_mlp": graph.parallel_attn_mlp,
           "d_model": int(d_model)}
    node_flags = graph.node_in_circuit().tolist()
    node_flags[graph.layout.logits_node] = True  # EAP-IG's logits node is always in the graph
    nodes = {name: {"in_graph": bool(f)} for name, f in zip(graph.nodes, node_flags)}
    order = edge_order(graph.layout)
    names = graph.edge_names(order)
    scores = graph.scores[order].tolist()
    flags = graph.in_circuit[order].tolist()
    edges = {n: {"score": s if math.isfinite(s) else None, "in_graph": bool(f)} for n, s, f in zip(names, scores, flags)}
    return {"cfg": cfg, "nodes": nodes, "edges": edges}


def save_mib(graph: Graph, path: str | Path, d_model: int | None = None, overwrite: bool = False) -> Path:
    """Write :func:`to_mib_dict` to ``path`` atomically (strict JSON); returns the path."""
    return atomic_write_text(path, json.dumps(to_mib_dict(graph, d_model)), overwrite=overwrite)


def load_mib(path: str | Path) -> Graph:
    """Read an EAP-IG / MIB graph file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"graph file {p} does not exist")
    return from_mib_dict(json.loads(p.read_text(encoding="utf-8")))


__all__ = ["MIB_KEYS", "NEURON_KEYS", "edge_order", "from_mib_dict", "is_mib", "load_mib", "mib_layout", "save_mib",
           "to_mib_dict"]
