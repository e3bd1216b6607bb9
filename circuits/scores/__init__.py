"""Scores: gradient-based edge attribution (EAP, EAP-IG variants)."""

from .attribution import METHOD_DOCS, METHODS, AttributionMethod, attribute, metric_of_runs
from .edge_pruning import edge_pruning

__all__ = ["edge_pruning", "METHOD_DOCS", "METHODS", "AttributionMethod", "attribute", "metric_of_runs"]
