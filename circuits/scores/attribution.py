"""Attribution patching: score every edge in a few forward and backward passes.

Sign convention (EAP-IG's): with the loss ``L = -m`` for a metric where higher is better
(``L = +m`` for KL/NLL), an edge's score is ``(z_s^corr - z_s^clean) · ∂L/∂in_v`` summed over
positions and the hidden dimension and averaged over examples. A positive score means
patching the edge to the corrupted run is predicted to *hurt* the behaviour: the edge
supports it. Scores approximate ``m(N) - m(N with the edge patched)`` (for higher-is-better
metrics).

Methods (docs/methods.md):

* ``eap``: gradient on the clean run. 2 forwards + 1 backward per batch.
* ``eap-ig-inputs``: gradients averaged over ``steps`` runs whose input embedding is
  ``corr + α (clean - corr)``, ``α = k/steps``, ``k = 0..steps-1``.
* ``eap-ig-activations``: for each node group (input, each layer's attention, each MLP) and
  ``α = k/steps``, ``k = 1..steps``, the group's output is set to ``α clean + (1-α) corr``;
  gradients at every receiver accumulate over all ``(2L+1) steps`` runs.
* ``clean-corrupted``: mean of the gradients on the clean and on the corrupted run.
* ``eap-ig-edges`` (ours): integrated gradients over the edge mask itself: every edge is
  patched with weight ``1-α`` (midpoint rule, ``α = (k+½)/steps``) and the difference uses
  the live sender output of that run. It satisfies completeness: the sum of all scores
  tends to ``m(clean) - m(corrupted)`` as ``steps`` grows.

Every hot path is a tensor op: per receiver group, one ``[n_senders, B·P·d] x [B·P·d, R_g]``
matmul inside the backward hook; no loop over edges.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, get_args

import torch
from torch import nn

from ..graph import Graph, GraphLayout, Scoring
from ..metrics import answer_columns, check_metric_output, get_metric, is_higher_better, metric_name, on_columns
from ..models import graph_for
from ..parallel import all_reduce_sum, is_main
from ..patching.runner import shard_data
from ..runtime import Patch, Probe, TracedModel, as_traced
from ..tasks import Batch, Task, task_metric

AttributionMethod = Literal["eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "eap-ig-edges"]
"""Gradient-based edge scoring methods; :data:`METHOD_DOCS` describes each."""

METHODS: tuple[str, ...] = get_args(AttributionMethod)

METHOD_DOCS: dict[str, str] = {
    "eap": "edge attribution patching: the gradient on the clean run (2 forwards + 1 backward per batch)",
    "eap-ig-inputs": "EAP-IG: gradients averaged over runs whose input embedding goes from corrupted to clean",
    "eap-ig-activations": "EAP-IG over activations: each node group interpolated from corrupted to clean in turn",
    "clean-corrupted": "mean of the gradients on the clean and on the corrupted run",
    "eap-ig-edges": "integrated gradients over the edge mask itself (its scores sum to m(clean) - m(corrupted))",
}
IG_METHODS = ("eap-ig-inputs", "eap-ig-activations", "eap-ig-edges")


class _ScoreAccumulator:
    """Receives receiver-input gradients and adds ``Δ · grad`` into a dense ``[S, R]`` table."""

    def __init__(self, layout: GraphLayout, device: torch.device) -> None:
        self.table = torch.zeros(layout.n_senders, layout.n_receivers, dtype=torch.float32, device=device)
        self.delta: torch.Tensor | None = None  # [S, B, P, d]: corrupted - clean (or live), padding zeroed
        self.weight = 1.0

    def __call__(self, receivers: torch.Tensor, senders: slice, grad: torch.Tensor) -> None:
        d = self.delta[senders].float().flatten(1)  # [n, B*P*d]
        g = grad.detach().float().flatten(1)  # [R_g, B*P*d]
        self.table[senders, receivers] += self.weight * (d @ g.t())


def _masked_delta(a: torch.Tensor, b: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``a - b`` ([S, B, P, d]) in float32 (a bf16/fp16 difference of close values would lose its
    significant bits), with padded positions zeroed."""
    return (a.float() - b.float()) * attention_mask[None, :, :, None].float()


def _loss(metric: Callable, higher: bool, logits: torch.Tensor, batch: Batch, clean_logits: torch.Tensor) -> torch.Tensor:
    values = check_metric_output(metric(logits, batch, clean_logits), len(batch))
    if not values.requires_grad:
        raise ValueError(
            "the metric's output has no gradient: attribution needs a differentiable metric of the logits "
            "(accuracy is not; use logit_diff, prob_diff, kl_div or answer_logprob)"
        )
    return -values.sum() if higher else values.sum()


def attribute(
    model: nn.Module | TracedModel,
    data: Task | Iterable[Batch],
    metric: str | Callable | None = None,
    method: AttributionMethod = "eap",
    *,
    steps: int = 5,
    batch_size: int = 16,
    absolute: bool = False,
    progress: bool = False,
    full_logits: bool = False,
) -> Graph:
    """Score every edge: a new :class:`~circuits.graph.Graph` with the scores, every edge in the circuit,
    and a :class:`~circuits.graph.Scoring` record as provenance.

    Args:
        model: a `transformers` causal LM or a :class:`TracedModel`.
        data: a :class:`~circuits.tasks.Task` (batched with ``batch_size``) or batches.
        metric: metric name or callable ``(logits, batch, clean_logits) -> [B]``; default the task's.
        method: one of :data:`METHODS`.
        steps: interpolation steps for the IG methods.
        absolute: store ``|score|``.
        progress: show a tqdm progress bar.
        full_logits: give the metric logits at every position (``[B, P, V]``). By default
            logits are computed only at the answer positions (``[B, 1, V]`` with
            ``answer_pos = 0``), which skips most of the unembedding work; set this for a
            custom metric that reads other positions.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; valid: {', '.join(METHODS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    tm = as_traced(model)
    layout = tm.layout
    metric = task_metric(metric, data)
    metric_fn = get_metric(metric)
    higher = is_higher_better(metric_fn)
    batches, n_total = shard_data(tm, data, batch_size)  # in a process group: this rank's examples
    dev = tm.device
    acc = _ScoreAccumulator(layout, dev)
    t0 = time.perf_counter()
    iterator: Iterable[Batch] = batches
    if progress and is_main():
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc=f"attribution ({method})", unit="batch")
    runner = _RUNNERS[method]
    for batch in iterator:
        batch = batch.to(dev)
        if batch.clean.shape != batch.corrupted.shape:
            raise ValueError(
                f"clean {tuple(batch.clean.shape)} and corrupted {tuple(batch.corrupted.shape)} batches differ in shape; "
                "clean and corrupted prompts must tokenize to the same length"
            )
        runner(_Job(tm, batch, metric_fn, higher, acc, steps, full_logits))
    scores = layout.from_dense(all_reduce_sum(acc.table)).cpu() / n_total
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        names = layout.edge_names(bad.nonzero().flatten()[:10])
        raise FloatingPointError(
            f"{int(bad.sum())} edge scores are NaN/inf (e.g. {names}); the metric or the model produced non-finite "
            "gradients. Check for -inf logits in the metric (e.g. log of a zero probability) or run in float32."
        )
    if absolute:
        scores = scores.abs()
    scoring = Scoring(method=method, metric=metric_name(metric), steps=steps if method in IG_METHODS else None,
                      absolute=absolute, n_examples=n_total, seconds=round(time.perf_counter() - t0, 4))
    return graph_for(tm.model).with_scores(scores, scoring=scoring)


# ---------------------------------------------------------------------- method bodies
@dataclass
class _Job:
    """One batch's attribution work: the model, the batch, the metric and where scores go.

    Unless ``full_logits``, logits are computed only at the answer positions
    (``logit_positions``) and the metric sees ``metric_batch``, whose answer_pos is 0; a metric that
    reads only the answer tokens' logits (``answer_columns_only``) gets those columns alone (``columns``),
    which spares the unembedding's forward and backward.
    """

    tm: TracedModel
    batch: Batch
    metric: Callable
    higher: bool
    acc: _ScoreAccumulator
    steps: int
    full_logits: bool = False

    @property
    def positions(self) -> torch.Tensor | None:
        return None if self.full_logits else self.batch.answer_pos

    @cached_property
    def columns(self) -> torch.Tensor | None:
        return None if self.full_logits else answer_columns([self.metric], self.batch)

    @property
    def metric_batch(self) -> Batch:
        if self.full_logits:
            return self.batch
        cols = self.columns
        return self.batch.at_answer() if cols is None else on_columns(self.batch.at_answer(), cols)

    def run(self, ids: torch.Tensor, **kw):
        return self.tm.run(ids, self.batch.attention_mask, logit_positions=self.positions,
                           logit_columns=self.columns, **kw)

    def clean_and_corrupted(self):
        with torch.no_grad():
            return self.run(self.batch.clean, record=True), self.run(self.batch.corrupted, record=True)

    def set_delta(self, corrupted: torch.Tensor, reference: torch.Tensor, weight: float) -> None:
        self.acc.delta = _masked_delta(corrupted, reference, self.batch.attention_mask)
        self.acc.weight = weight

    def backward(self, out, clean_logits: torch.Tensor) -> None:
        loss = _loss(self.metric, self.higher, out.logits, self.metric_batch, clean_logits)
        # gradients only along the activation path: no parameter .grad is touched
        torch.autograd.grad(loss, out.leaves, allow_unused=True)

    def grad_pass(self, ids: torch.Tensor, clean_logits: torch.Tensor, sender_hook=None) -> None:
        """One forward with receiver probes on ``ids`` and one backward of the metric's loss."""
        probe = Probe(on_grad=self.acc, sender_hook=sender_hook, input_requires_grad=True)
        self.backward(self.run(ids, probe=probe), clean_logits)


def _leaf(value: torch.Tensor, s_group: int):
    """A sender hook replacing the group that starts at ``s_group`` by a grad-requiring leaf."""

    def hook(s0: int, s1: int, z: torch.Tensor) -> torch.Tensor:
        return value.detach().to(z.dtype).requires_grad_(True) if s0 == s_group else z

    return hook


def _run_eap(job: _Job) -> None:
    clean, corr = job.clean_and_corrupted()
    job.set_delta(corr.senders, clean.senders, 1.0)
    job.grad_pass(job.batch.clean, clean.logits)


def _run_eap_ig_inputs(job: _Job) -> None:
    clean, corr = job.clean_and_corrupted()
    job.set_delta(corr.senders, clean.senders, 1.0 / job.steps)
    e_clean, e_corr = clean.senders[0:1], corr.senders[0:1]
    for k in range(job.steps):
        alpha = k / job.steps
        job.grad_pass(job.batch.clean, clean.logits, sender_hook=_leaf(e_corr + alpha * (e_clean - e_corr), 0))


def _run_clean_corrupted(job: _Job) -> None:
    clean, corr = job.clean_and_corrupted()
    job.set_delta(corr.senders, clean.senders, 0.5)
    job.grad_pass(job.batch.clean, clean.logits)
    job.grad_pass(job.batch.corrupted, clean.logits)


def _run_eap_ig_activations(job: _Job) -> None:
    clean, corr = job.clean_and_corrupted()
    groups = job.tm.layout.node_groups()  # input, then per layer: heads, MLP
    job.set_delta(corr.senders, clean.senders, 1.0 / (len(groups) * job.steps))
    for s0, s1 in groups:
        for k in range(1, job.steps + 1):
            alpha = k / job.steps
            value = alpha * clean.senders[s0:s1] + (1 - alpha) * corr.senders[s0:s1]
            job.grad_pass(job.batch.clean, clean.logits, sender_hook=_leaf(value, s0))


def _run_eap_ig_edges(job: _Job) -> None:
    clean, corr = job.clean_and_corrupted()
    for k in range(job.steps):
        alpha = (k + 0.5) / job.steps
        keep = torch.full((job.tm.layout.n_edges,), alpha, device=job.tm.device)  # every edge kept with weight α
        out = job.run(job.batch.clean, patch=Patch(keep, corr.senders), record=True,
                      probe=Probe(on_grad=job.acc, input_requires_grad=True))
        # Δ of this run: corrupted minus the live sender outputs (EAP's sign)
        job.set_delta(corr.senders, out.senders, 1.0 / job.steps)
        job.backward(out, clean.logits)


_RUNNERS: dict[str, Callable] = {
    "eap": _run_eap,
    "eap-ig-inputs": _run_eap_ig_inputs,
    "eap-ig-activations": _run_eap_ig_activations,
    "clean-corrupted": _run_clean_corrupted,
    "eap-ig-edges": _run_eap_ig_edges,
}


def metric_of_runs(
    model: nn.Module | TracedModel, data: Task | Iterable[Batch], metric: str | Callable | None = None, batch_size: int = 16
) -> tuple[float, float]:
    """Mean metric on the clean and on the corrupted runs: ``(m(N), m(∅))``."""
    tm = as_traced(model)
    metric_fn = get_metric(task_metric(metric, data))
    tot = torch.zeros(2, dtype=torch.float64)  # metric summed over the clean, the corrupted runs
    batches, n = shard_data(tm, data, batch_size)
    with torch.no_grad():
        for batch in batches:
            batch = batch.to(tm.device)
            lc = tm.run(batch.clean, batch.attention_mask, logit_positions=batch.answer_pos).logits
            lx = tm.run(batch.corrupted, batch.attention_mask, logit_positions=batch.answer_pos).logits
            mb = batch.at_answer()
            tot += torch.stack([metric_fn(lc, mb, lc).double().sum(), metric_fn(lx, mb, lc).double().sum()]).cpu()
    tot = all_reduce_sum(tot)
    return float(tot[0]) / n, float(tot[1]) / n


__all__ = ["AttributionMethod", "METHODS", "METHOD_DOCS", "attribute", "metric_of_runs"]
