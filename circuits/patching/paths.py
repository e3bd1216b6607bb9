"""Path patching (Wang et al. 2022): patch senders along their direct paths into chosen receivers only."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from ..graph import GraphLayout
from ..runtime import TracedModel
from ..tasks import Batch, Task
from .runner import PatchRunner


def _expand_receivers(layout: GraphLayout, receivers: Sequence[str]) -> torch.Tensor:
    """Receiver indices of names: a head stands for its q, k and v."""
    return torch.tensor([r for name in receivers for r in layout.node_receivers(name)], dtype=torch.long)


def path_patching_masks(g: GraphLayout, senders: Sequence[Sequence[str]], receivers: Sequence[str]) -> torch.Tensor:
    """Keep-masks ``[K, E]``: for each sender set, remove the edges from it into ``receivers``."""
    if not receivers:
        raise ValueError("path patching needs at least one receiver (e.g. 'a9.h9<q>', 'a10.h0', 'logits')")
    r_idx = _expand_receivers(g, receivers)
    masks = torch.ones(len(senders), g.n_edges)
    lookup = g.edge_table
    for k, sset in enumerate(senders):
        if not sset:
            raise ValueError("empty sender set: name at least one sender node (e.g. ['a7.h3'])")
        s_idx = torch.tensor([g.sender_index(s) for s in sset])
        e = lookup[s_idx[:, None], r_idx[None, :]].flatten()
        e = e[e >= 0]
        if len(e) == 0:
            raise ValueError(f"receivers {list(receivers)} are not downstream of senders {list(sset)}: no edges connect them")
        masks[k, e] = 0.0
    return masks


def path_patching(
    model: nn.Module | TracedModel,
    data: Task | Iterable[Batch],
    senders: Sequence[str],
    receivers: Sequence[str],
    metric: str | Callable | None = None,
    batch_size: int = 16,
    runner: PatchRunner | None = None,
) -> float:
    """Metric change when ``senders`` are patched to corrupted only along their direct paths
    into ``receivers`` (everything else clean; downstream of the receivers recomputed).

    Returns ``m(patched) - m(clean)`` (negative when the path supports the behaviour for a
    higher-is-better metric), as in Wang et al.'s plots.
    """
    r = runner or PatchRunner(model, data, metric, batch_size=batch_size)
    masks = path_patching_masks(r.layout, [list(senders)], receivers)
    vals = r.metric_values(torch.cat([torch.ones(1, r.layout.n_edges), masks]))
    return float(vals[1] - vals[0])


def path_patching_grid(
    model: nn.Module | TracedModel,
    data: Task | Iterable[Batch],
    receivers: Sequence[str],
    metric: str | Callable | None = None,
    batch_size: int = 16,
    max_rows: int | None = None,
    normalize: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Every sender head × ``receivers``: ``[L, H]`` metric changes (NaN where a head is not upstream).

    With ``normalize`` the changes are divided by ``m(clean) - m(corrupted)`` (as a fraction).
    """
    r = PatchRunner(model, data, metric, batch_size=batch_size, max_rows=max_rows)
    g = r.layout
    r_idx = _expand_receivers(g, receivers)
    lookup = g.edge_table
    masks, cells = [], []
    for layer in range(g.n_layers):
        for h in range(g.n_heads):
            s = g.sender_index(f"a{layer}.h{h}")
            e = lookup[s, r_idx]
            e = e[e >= 0]
            if len(e):
                m = torch.ones(g.n_edges)
                m[e] = 0.0
                masks.append(m)
                cells.append((layer, h))
    if not masks:
        raise ValueError(f"no attention head is upstream of receivers {list(receivers)}")
    E = g.n_edges
    vals = r.metric_values(torch.cat([torch.ones(1, E), torch.zeros(1, E), torch.stack(masks)]), progress=progress)
    grid = torch.full((g.n_layers, g.n_heads), float("nan"))
    for (layer, h), v in zip(cells, vals[2:].tolist()):
        grid[layer, h] = v - float(vals[0])
    if normalize:
        span = float(vals[0] - vals[1])
        if abs(span) < 1e-12:
            raise ValueError("m(clean) equals m(corrupted): normalisation undefined")
        grid = grid / span
    return grid
