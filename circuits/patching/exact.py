"""Exact single-edge effects: the metric change when one edge is removed from a base circuit."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from ..graph import KeepMask
from ..runtime import TracedModel
from ..tasks import Batch, Task
from .runner import Ablation, PatchRunner
from .single_edge import single_edge_metric_values

CHUNK = 1024  # removals per evaluate call against a circuit: bounds the [n, E] masks built at once


def exact_edge_effects(
    model: nn.Module | TracedModel | None,
    data: Task | Iterable[Batch] | None,
    metric: str | Callable | None = None,
    edges: torch.Tensor | Sequence[str] | None = None,
    base_mask: KeepMask | None = None,
    ablation: Ablation = "patching",
    batch_size: int = 16,
    max_rows: int | None = None,
    progress: bool = False,
    runner: PatchRunner | None = None,
) -> torch.Tensor:
    """Exact effect of removing each edge alone from ``base_mask``: ``[E]`` (NaN for edges not evaluated).

    ``effect_e = badness(base minus e) - badness(base)``: for logit difference that is
    ``m(base) - m(base without e)``, the quantity EAP approximates. ``base_mask`` (a keep-mask)
    defaults to the full graph. Against the full graph only the edge's receiver node is
    recomputed, then the later layers (:mod:`circuits.patching.single_edge`); against another
    base mask, the sparse masked forward works relative to that circuit's run (only what each removal
    changes downstream is computed); where it does not apply (mean or zero ablation, post-norm families)
    each edge's run resumes at its receiver's layer from a recorded base run.
    Pass ``runner`` to reuse prepared runs (``model``/``data`` are then ignored).
    """
    r = runner or PatchRunner(model, data, metric, ablation, batch_size, max_rows)
    lay = r.layout
    base = torch.ones(lay.n_edges) if base_mask is None else lay.keep_mask(base_mask).float()
    idx = _edge_indices(r, edges)
    base_bad = float(r.badness(r.evaluate(base[None], around=base)["m"].float())[0])
    out = torch.full((lay.n_edges,), float("nan"))
    if bool((base > 0.5).all()):  # the usual case: one edge removed from the full graph
        out[idx] = r.badness(single_edge_metric_values(r, idx, progress)) - base_bad
        return out
    if r.sparse:  # relative to the base circuit's run: each removal computes what it changes downstream
        for c0 in range(0, len(idx), CHUNK):
            sel = idx[c0:c0 + CHUNK]
            vals = r.evaluate(_without_each(base, sel), progress=progress, around=base)["m"].float()
            out[sel] = r.badness(vals) - base_bad
        return out
    bases = r.base_runs(base)
    layer_of_edge = lay.edge_layer(idx)
    for layer in layer_of_edge.unique().tolist():
        # edges into layer `layer` leave every earlier layer as in the base run: resume there
        sel = idx[layer_of_edge == layer]
        vals = r.evaluate(_without_each(base, sel), progress=progress, resume_from=(layer, bases))["m"].float()
        out[sel] = r.badness(vals) - base_bad
    return out


def _without_each(base: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """``[n, E]``: ``base`` with edge ``edges[i]`` removed in row ``i``."""
    masks = base.repeat(len(edges), 1)
    masks[torch.arange(len(edges)), edges] = 0.0
    return masks


def _edge_indices(r: PatchRunner, edges: torch.Tensor | Sequence[str] | None) -> torch.Tensor:
    if edges is None:
        return torch.arange(r.layout.n_edges)
    if isinstance(edges, torch.Tensor) and edges.dtype == torch.bool:
        return edges.nonzero().flatten()
    if isinstance(edges, torch.Tensor):
        return edges.long().flatten()
    return r.layout.edge_index(list(edges))
