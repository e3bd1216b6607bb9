"""Evaluation: faithfulness of circuits, MIB curves (CPR / CMD), ROC against ground truth."""

from .compare import Comparison, compare
from .curve import Curve, CurveKind, cmd, cpr, curve_masks, curves_to_csv, faithfulness_curve, trapezoid_area
from .faithfulness import MIB_FRACTIONS, NORMALIZATION_RTOL, normalized_faithfulness
from .report import CircuitReport, evaluate_circuit
from .roc import RocResult, node_roc, node_scores_max, roc

__all__ = [
    "Comparison",
    "compare",
    "MIB_FRACTIONS",
    "NORMALIZATION_RTOL",
    "CircuitReport",
    "Curve",
    "CurveKind",
    "RocResult",
    "cmd",
    "cpr",
    "curve_masks",
    "curves_to_csv",
    "evaluate_circuit",
    "faithfulness_curve",
    "node_roc",
    "node_scores_max",
    "normalized_faithfulness",
    "roc",
    "trapezoid_area",
]
