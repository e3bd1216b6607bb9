"""Circuit: from scores to a circuit (selection rules and dangling-edge removal)."""

from . import prune
from .prune import dangling_mask, greedy, remove_dangling, threshold, top_fraction, topn, topn_masks

__all__ = ["prune", "dangling_mask", "greedy", "remove_dangling", "threshold", "top_fraction", "topn", "topn_masks"]
