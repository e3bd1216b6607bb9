"""ACDC (Conmy et al. 2023): remove edges, latest first, while the metric moves by less than τ."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..graph import Graph, Scoring, Selection, reachability
from ..models import graph_for
from ..parallel import is_main
from ..runtime import TracedModel
from ..tasks import Batch, Task
from .runner import Ablation, PatchRunner


@dataclass
class ACDCResult:
    """Outcome of :func:`acdc`.

    ``graph``: scores = the badness increase seen when each edge was tried (0 for edges skipped
    because their receiver no longer reached the logits), circuit = the edges kept;
    ``order``: edge indices in the order they were decided; ``kept``: the decision for each.
    """

    graph: Graph
    threshold: float
    order: list[int] = field(default_factory=list)
    kept: list[bool] = field(default_factory=list)
    n_forward_batches: int = 0
    seconds: float = 0.0
    metric_value: float = float("nan")

    @property
    def scores(self) -> torch.Tensor:
        return self.graph.scores


def acdc(
    model: nn.Module | TracedModel,
    data: Task | Iterable[Batch],
    threshold: float,
    metric: str | Callable | None = "kl_div",
    *,
    absolute: bool = False,
    ablation: Ablation = "patching",
    batch_size: int = 16,
    max_rows: int | None = None,
    sparse: bool = True,
    atol: float = 1e-6,
    progress: bool = False,
) -> ACDCResult:
    """ACDC: a reverse-topological sweep removing edges that matter less than ``threshold`` (τ).

    For each receiver, from the logits backwards, and each of its incoming edges (latest
    sender first), the edge is tentatively removed from the current circuit; it is removed
    for good when the badness (KL to the clean model, or minus the task metric) rises by
    less than ``threshold`` (``|Δ|`` if ``absolute``), plus a float-noise tolerance ``atol``.

    Batched but exactly sequential: the candidates of a receiver are evaluated together as
    the chain "remove e1", "remove e1,e2", ... (assuming removals); the chain is valid up to
    the first edge that is kept, and the rest is re-evaluated from there. Receivers whose
    node no longer reaches the logits lose their edges without evaluation (Δ = 0 exactly).
    ``max_rows`` and ``sparse`` are :class:`PatchRunner`'s.
    """
    if not threshold >= 0:  # also refuses NaN
        raise ValueError(f"the ACDC threshold τ must be a number >= 0, got {threshold}")
    t0 = time.perf_counter()
    r = PatchRunner(model, data, metric, ablation, batch_size, max_rows, sparse=sparse)
    sweep = _Sweep(r, threshold, absolute, atol)
    pbar = None
    if progress and is_main():  # other ranks of a process group stay quiet
        from tqdm.auto import tqdm

        pbar = tqdm(total=r.layout.n_edges, desc="ACDC", unit="edge")
    try:
        for recv in reversed(range(r.layout.n_receivers)):
            n = sweep.receiver(recv)
            if pbar and n:
                pbar.update(n)
                pbar.set_postfix(kept=int(sweep.current.sum()), removed=len(sweep.order) - sum(sweep.kept))
    finally:
        if pbar:
            pbar.close()
    final = float(r.metric_values(sweep.current[None])[0])
    scoring = Scoring(method="acdc", metric=r.metric_name, absolute=absolute, ablation=ablation,
                      n_examples=r.n_examples, seconds=round(time.perf_counter() - t0, 4), threshold=threshold)
    graph = graph_for(r.tm.model).with_scores(sweep.scores, scoring=scoring)
    graph = graph.with_circuit(sweep.current > 0.5, Selection(rule="acdc", t=threshold, absolute=absolute, prune=False))
    return ACDCResult(graph, threshold, sweep.order, sweep.kept, sweep.n_batches, time.perf_counter() - t0, final)


class _Sweep:
    """ACDC's state: the current circuit, the scores and decisions so far."""

    def __init__(self, r: PatchRunner, threshold: float, absolute: bool, atol: float) -> None:
        self.r, self.threshold, self.absolute, self.atol = r, threshold, absolute, atol
        E = r.layout.n_edges
        self.current = torch.ones(E)
        self.scores = torch.zeros(E)
        self.order: list[int] = []
        self.kept: list[bool] = []
        self.cur_bad = float(r.badness(r.metric_values(self.current[None]))[0])
        self.n_batches = 1

    def receiver(self, recv: int) -> int:
        """Decide every incoming edge of receiver ``recv``; returns how many were decided."""
        lay = self.r.layout
        cand = lay.edge_table[:, recv]
        cand = cand[cand >= 0].flip(0)  # latest sender first
        if len(cand) == 0:
            return 0
        node = int(lay.receiver_node[recv])
        if node != lay.logits_node and not bool(reachability(lay, self.current)[1][node]):
            self.current[cand] = 0.0  # the node no longer reaches the logits: its inputs cannot matter
            self.order += cand.tolist()
            self.kept += [False] * len(cand)
            return len(cand)
        pending = cand.tolist()
        while pending:
            pending = pending[self._chain(pending):]
        return len(cand)

    def _chain(self, pending: list[int]) -> int:
        """Evaluate "remove e1", "remove e1,e2", ... at once; decide up to the first kept edge."""
        chain = self.current.repeat(len(pending), 1)
        for j, e in enumerate(pending):
            chain[j:, e] = 0.0
        bad = self.r.badness(self.r.metric_values(chain)).tolist()
        self.n_batches += 1
        prev = self.cur_bad
        consumed = 0
        for j, e in enumerate(pending):
            delta = bad[j] - prev
            self.scores[e] = delta
            self.order.append(e)
            consumed += 1
            test = abs(delta) if self.absolute else delta
            if test < self.threshold + self.atol:
                self.current[e] = 0.0
                prev = bad[j]
                self.kept.append(False)
            else:
                self.kept.append(True)
                break
        self.cur_bad = prev
        return consumed
