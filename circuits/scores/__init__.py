"""Scores: gradient-based edge attribution (EAP, EAP-IG variants)."""

from .attribution import METHOD_DOCS, METHODS, AttributionMethod, attribute, metric_of_runs

__all__ = ["METHOD_DOCS", "METHODS", "AttributionMethod", "attribute", "metric_of_runs"]
