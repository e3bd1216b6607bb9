"""Normalized faithfulness of a circuit (MIB's definition; docs/evaluation.md).

``f(C) = (m(C) - m(∅)) / (m(N) - m(∅))`` where each ``m`` is the *mean* metric over the examples
(a ratio of means, as in MIB); ``m(N)`` keeps every edge, ``m(∅)`` removes every edge,
``m(C)`` keeps the circuit's edges only.
"""

from __future__ import annotations

import math

import numpy as np

from ..graph import Graph
from ..patching import PatchRunner

__all__ = ["MIB_FRACTIONS", "NORMALIZATION_ATOL", "NORMALIZATION_RTOL", "normalized_faithfulness", "check_same_model",
           "model_name"]

MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""MIB circuit track's edge fractions ``k``."""

NORMALIZATION_RTOL = 1e-6
"""``|m(N) - m(∅)| <= NORMALIZATION_RTOL * max(|m(N)|, |m(∅)|)`` counts as zero (metric values are
float32, whose epsilon is 1.2e-7, so a smaller tolerance would let rounding noise through)."""

NORMALIZATION_ATOL = 1e-5
"""... and so does ``|m(N) - m(∅)| <= NORMALIZATION_ATOL`` whatever the metric's scale: dividing by a span
that small turns float32 noise in ``m(C)`` into faithfulness swings of order 1e-2 and more."""


# ============================================================================================== faithfulness
def normalized_faithfulness(m_circuit: float | np.ndarray, m_full: float, m_empty: float,
                            rtol: float = NORMALIZATION_RTOL, atol: float = NORMALIZATION_ATOL) -> float | np.ndarray:
    """``(m(C) - m(∅)) / (m(N) - m(∅))``; raises ``ValueError`` when ``m(N) ≈ m(∅)`` (never divides by ~0):
    ``|m(N) - m(∅)| <= max(atol, rtol * max(|m(N)|, |m(∅)|))``."""
    span = float(m_full) - float(m_empty)
    if not math.isfinite(span):
        raise ValueError(f"normalization undefined: m(N) = {m_full!r}, m(∅) = {m_empty!r} (not finite)")
    if abs(span) <= max(atol, rtol * max(abs(float(m_full)), abs(float(m_empty)))) or span == 0.0:
        raise ValueError(
            f"normalization undefined: m(N) = m(∅) = {float(m_full):.9g} (the full model and the fully ablated model "
            "score the same, so faithfulness cannot be normalized; check that the corrupted prompts actually "
            "change the answer, or use another metric / ablation)"
        )
    if isinstance(m_circuit, np.ndarray):
        return (m_circuit - float(m_empty)) / span + 0.0  # + 0.0 turns -0.0 into 0.0
    return (float(m_circuit) - float(m_empty)) / span + 0.0




def model_name(runner: PatchRunner) -> str:
    """The model's hub name or folder (``config._name_or_path``), else its family or class."""
    cfg = getattr(runner.tm.model, "config", None)
    name = getattr(cfg, "_name_or_path", "") or getattr(cfg, "model_type", "") if cfg is not None else ""
    return str(name or type(runner.tm.model).__name__)


def check_same_model(graph: Graph, runner: PatchRunner) -> None:
    """Raise ``ValueError`` when ``graph`` was built for a model of another shape than the runner's."""
    if not graph.same_shape(runner.layout):
        (L, H, par), (L2, H2, par2) = graph.layout.shape, runner.layout.shape
        raise ValueError(
            f"the graph ({L} layers x {H} heads, parallel={par}) does not match the model ({L2} x {H2}, parallel={par2})"
        )
