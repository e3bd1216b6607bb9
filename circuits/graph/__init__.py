"""Graph: the edge-level computational graph (layout, scores, circuit, provenance)."""

from .graph import FORMAT_NAME, FORMAT_VERSION, Graph
from .layout import (
    QKV,
    GraphLayout,
    KeepMask,
    PatchWeights,
    expected_edge_count,
    head_of,
    layout_for,
    node_attributes,
    node_layer,
    split_receiver,
)
from .provenance import Provenance, Scoring, Selection, SelectionRule
from .reach import on_input_logits_paths, reachability

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Graph",
    "GraphLayout",
    "KeepMask",
    "PatchWeights",
    "Provenance",
    "QKV",
    "Scoring",
    "Selection",
    "SelectionRule",
    "expected_edge_count",
    "head_of",
    "layout_for",
    "node_attributes",
    "node_layer",
    "on_input_logits_paths",
    "reachability",
    "split_receiver",
]
