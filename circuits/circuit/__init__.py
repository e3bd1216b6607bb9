"""Circuit: from scores to a circuit (selection rules and dangling-edge removal)."""

from . import prune
from .minimal import Refinement, SizeSearch, refine, search_size
from .prune import dangling_mask, greedy, remove_dangling, threshold, top_fraction, topn, topn_masks

__all__ = [
    "Refinement", "SizeSearch", "dangling_mask", "greedy", "prune", "refine", "remove_dangling", "search_size",
    "threshold", "top_fraction", "topn", "topn_masks",
]
