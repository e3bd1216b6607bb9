"""Iterative pruning on exact effects, recomputed against the current circuit every round."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..graph import Graph, Scoring, Selection
from ..models import graph_for
from ..runtime import TracedModel
from ..tasks import Batch, Task
from .exact import exact_edge_effects
from .runner import PatchRunner


def iterative_prune(
    model: nn.Module | TracedModel,
    data: Task | Iterable[Batch],
    n_edges: int,
    metric: str | Callable | None = None,
    fraction_per_round: float = 0.5,
    batch_size: int = 16,
    max_rows: int | None = None,
    progress: bool = False,
) -> Graph:
    """Greedy pruning on exact effects: repeatedly drop the least important edges of the
    current circuit (``fraction_per_round`` of the surplus per round) until ``n_edges`` remain.

    Effects are recomputed against the current circuit every round, so interactions between
    removed edges are taken into account (unlike one-shot top-n on attribution scores).
    Returns a new graph: scores = exact effects against the final circuit, circuit = the kept edges.
    """
    t0 = time.perf_counter()
    r = PatchRunner(model, data, metric, batch_size=batch_size, max_rows=max_rows)
    E = r.layout.n_edges
    if not 0 <= n_edges <= E:
        raise ValueError(f"n_edges must be in [0, {E}], got {n_edges}")
    current = torch.ones(E)
    while int(current.sum()) > n_edges:
        alive = current.nonzero().flatten()
        eff = exact_edge_effects(None, None, edges=alive, base_mask=current, runner=r, progress=progress)[alive]
        drop = max(1, int((len(alive) - n_edges) * fraction_per_round))
        current[alive[torch.argsort(eff)[:drop]]] = 0.0
    final = exact_edge_effects(None, None, edges=current.nonzero().flatten(), base_mask=current, runner=r)
    scoring = Scoring(method="exact", metric=r.metric_name, n_examples=r.n_examples,
                      seconds=round(time.perf_counter() - t0, 4))
    graph = graph_for(r.tm.model).with_scores(torch.nan_to_num(final, nan=0.0), scoring=scoring)
    return graph.with_circuit(current > 0.5, Selection(rule="iterative", n=n_edges, prune=False))
