"""Patching: the masked-evaluation loop and the methods built on it (exact effects, ACDC, path patching)."""

from .acdc import ACDCResult, acdc
from .exact import exact_edge_effects
from .iterative import iterative_prune
from .paths import path_patching, path_patching_grid, path_patching_masks
from .runner import ABLATIONS, Ablation, PatchRunner, PreparedBatch, masked_metric

__all__ = [
    "ABLATIONS",
    "ACDCResult",
    "Ablation",
    "PatchRunner",
    "PreparedBatch",
    "acdc",
    "exact_edge_effects",
    "iterative_prune",
    "masked_metric",
    "path_patching",
    "path_patching_grid",
    "path_patching_masks",
]
