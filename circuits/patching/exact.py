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


def exact_edge_effects(
    model: nn.Module | TracedModel | None,
    data: Task | Iterable[Batch] | None,
    metric: str | Callable | None = None,
    edges: torch.Tensor | Sequence[str] | None = None,
    base_mask: KeepMask | None = None,
    ablation: Ablation = "patching",
    batch_size: int = 16,
    max_rows: int = 512,
    progress: bool = False,
    runner: PatchRunner | None = None,
) -> torch.Tensor:
    """Exact effect of removing each edge alone from ``base_mask``: ``[E]`` (NaN for edges not evaluated).

    ``effect_e = badness(base minus e) - badness(base)``: for logit difference that is
    ``m(base) - m(base without e)``, the quantity EAP approximates. ``base_mask`` (a keep-mask)
    defaults to the full graph. Against the full graph only the edge's receiver node is
    recomputed, then the later layers (:mod:`circuits.patching.single_edge`); against another
    base mask each edge's run resumes at its receiver's layer from a recorded base run.
    Pass ``runner`` to reuse prepared runs (``model``/``data`` are then ignored).
    """
    r = runner or PatchRunner(model, data, metric, ablation, batch_size, max_rows)
    lay = r.layout
    base = torch.ones(lay.n_edges) if base_mask is None else lay.keep_mask(base_mask).float()
    idx = _edge_indices(r, edges)
    base_bad = float(r.badness(r.metric_values(base[None]))[0])
    out = torch.full((lay.n_edges,), float("nan"))
    if bool((base > 0.5).all()):  # the usual case: one edge removed from the full graph
        out[idx] = r.badness(single_edge_metric_values(r, idx, progress)) - base_bad
        return out
    bases = r.base_runs(base)
    layer_of_edge = lay.edge_layer(idx)
    for layer in layer_of_edge.unique().tolist():
        # edges into layer `layer` leave every earlier layer as in the base run: resume there
        sel = idx[layer_of_edge == layer]
        masks = base.repeat(len(sel), 1)
        masks[torch.arange(len(sel)), sel] = 0.0
        vals = r.evaluate(masks, progress=progress, resume_from=(layer, bases))["m"].float()
        out[sel] = r.badness(vals) - base_bad
    return out


def _edge_indices(r: PatchRunner, edges: torch.Tensor | Sequence[str] | None) -> torch.Tensor:
    if edges is None:
        return torch.arange(r.layout.n_edges)
    if isinstance(edges, torch.Tensor) and edges.dtype == torch.bool:
        return edges.nonzero().flatten()
    if isinstance(edges, torch.Tensor):
        return edges.long().flatten()
    return r.layout.edge_index(list(edges))
