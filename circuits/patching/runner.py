"""The one masked-evaluation loop: a task's metrics under many edge keep-masks.

Everything that evaluates circuits by patching (exact effects, ACDC, path patching, iterative
pruning, faithfulness and curves) calls :meth:`PatchRunner.evaluate`. Clean and reference
runs are computed once per batch when the runner is built; masks go through the model
``max_rows // B`` at a time stacked in the batch dimension (``K * B`` rows per forward).
Identical masks are evaluated once; the all-kept mask takes the clean run's logits and,
when removed edges read the corrupted run, the all-removed mask takes the corrupted run's
(both identities are tested in tests/test_runtime.py). Chunks of binary masks under
``patching`` ablation go through the sparse masked forward (:mod:`circuits.runtime.sparse`, which
computes only the nodes a mask changes, from both runs recorded here) where the model's family
declares ``additive_residual``; everything else through ``TracedModel.run(..., patch=...)``.

In a ``torch.distributed`` process group (:mod:`circuits.parallel`) the runner holds this rank's
shard of the examples and every mean is all-reduced (``parallel="data"``), or it holds every
example and evaluates this rank's share of the masks (``parallel="masks"``); either way
:meth:`PatchRunner.evaluate` returns the same values on every rank.

Effects use the attribution sign: ``effect = badness(patched) - badness(reference)`` where
badness is ``-m`` for a metric where higher is better (``m`` for KL/NLL), so positive means
the patched edges supported the behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from ..graph import GraphLayout, KeepMask
from ..metrics import answer_columns, get_metric, is_higher_better, metric_name, on_columns
from ..parallel import PARALLEL_MODES, Parallel, agree, all_reduce_sum, fingerprint, gather_cat, is_main, shard_range, world
from ..planning import DENSE_SHARE, cpu_dense_masks
from ..runtime import Patch, Prefix, RunOutput, TracedModel, as_traced
from ..runtime.node_states import plan_states, supports_sparse
from ..runtime.sparse import SparseBase, SparseStats, sparse_logits
from ..tasks import Batch, Task, as_batches, task_metric

Ablation = Literal["patching", "mean", "zero"]
"""What removed edges read: ``patching`` the corrupted run's sender outputs; ``mean`` each sender's
mean clean output over the data (positions and examples); ``zero`` zeros."""

ABLATIONS: tuple[str, ...] = get_args(Ablation)


@dataclass(frozen=True)
class PreparedBatch:
    """One batch with the runs every masked evaluation of it reuses."""

    batch: Batch
    reference: torch.Tensor  # [S, B or 1, P or 1, d]: values removed edges read
    clean_logits: torch.Tensor  # [B, 1, V] at the answer positions
    corrupted_logits: torch.Tensor | None = None  # [B, 1, V]: the corrupted run's (ablation "patching")
    sparse: SparseBase | None = None  # both runs as the sparse masked forward reads them (when it applies)


class PatchRunner:
    """Evaluate a task's metric(s) under many edge keep-masks, reusing the clean/corrupted runs.

    Args:
        model: a `transformers` causal LM or a :class:`~circuits.runtime.TracedModel`.
        data: a Task or batches; all batches are prepared once.
        metric: name or callable (default: the task's).
        ablation: what removed edges read (:data:`Ablation`).
        batch_size: examples per batch when ``data`` is a Task.
        max_rows: at most this many ``mask x example`` rows per forward pass; None (the default): the
            most that fit the device's free memory (:func:`circuits.planning.runner_plan`, which may
            also turn the sparse path off when only the dense one fits).
        parallel: in a process group, split the examples (``data``) or the masks (``masks``).
        sparse: evaluate binary masks with the sparse masked forward (:mod:`circuits.runtime.sparse`:
            only the nodes a mask changes are computed) where it applies: ``patching`` ablation and a
            family that declares ``additive_residual``; records the clean run's senders and both
            runs' residuals once. ``sparse_stats`` counts what it computed.
    """

    #: a mask that makes more than this share of the nodes computed goes to the general patched forward
    #: (benchmarks/bench_curve.py's per-mask table shows the two paths costing about the same there, and
    #: such masks batched into one sparse forward would store masks x senders deltas); the planner's too
    DENSE_SHARE = DENSE_SHARE

    def __init__(
        self,
        model: nn.Module | TracedModel,
        data: Task | Iterable[Batch],
        metric: str | Callable | None = None,
        ablation: Ablation = "patching",
        batch_size: int = 16,
        max_rows: int | None = None,
        parallel: Parallel = "data",
        sparse: bool = True,
    ) -> None:
        if ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {ablation!r}; valid: {', '.join(ABLATIONS)}")
        if parallel not in PARALLEL_MODES:
            raise ValueError(f"unknown parallel mode {parallel!r}; valid: {', '.join(PARALLEL_MODES)}")
        self.tm = as_traced(model)
        self.layout: GraphLayout = self.tm.layout
        metric = task_metric(metric, data)
        self.metric_name = metric_name(metric)
        self.metric = get_metric(metric)
        self.higher = is_higher_better(self.metric)
        if max_rows is not None and int(max_rows) < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.ablation: Ablation = ablation
        self.parallel: Parallel = parallel
        self.sparse = sparse and ablation == "patching" and supports_sparse(self.tm.adapter)
        self.sparse_stats = SparseStats()
        self._rebased: tuple[bytes, list[SparseBase]] | None = None  # (circuit, its rebased sparse bases)
        local, self.n_examples = shard_data(self.tm, data, batch_size, split=parallel == "data")
        if max_rows is None:  # the most rows (and the path) that fit the free memory, for these batches
            from ..planning import runner_plan

            plan = runner_plan(self.tm.model, local, self.sparse, self.tm.device.type)
            max_rows, self.sparse = plan.max_rows, self.sparse and plan.sparse
        self.max_rows = int(max_rows)
        batches = [b.to(self.tm.device) for b in local]
        with torch.no_grad():
            self.prepared = self._prepare(batches)

    def _prepare(self, batches: list[Batch]) -> list[PreparedBatch]:
        tm, ablation = self.tm, self.ablation
        runs, bases = [], []
        for b in batches:
            if b.clean.shape != b.corrupted.shape:
                raise ValueError(
                    f"clean {tuple(b.clean.shape)} and corrupted {tuple(b.corrupted.shape)} differ in shape; "
                    "clean and corrupted prompts must tokenize to the same length"
                )
            sparse = self.sparse
            clean = tm.run(b.clean, b.attention_mask, record=ablation == "mean" or sparse, record_resid=sparse,
                           logit_positions=b.answer_pos)
            corr = (tm.run(b.corrupted, b.attention_mask, record=True, record_resid=sparse, logit_positions=b.answer_pos)
                    if ablation == "patching" else None)
            bases.append(SparseBase.from_runs(tm.blocks, b.attention_mask, b.answer_pos, clean, corr) if sparse else None)
            if sparse:  # the clean records live on in the sparse base only (as z^clean - z^corr)
                clean = RunOutput(clean.logits)
            runs.append((b, clean, corr))
        if ablation == "mean":  # per sender, over real positions of every example: [S, 1, 1, d]
            tot = sum((clean.senders.float() * b.attention_mask[None, :, :, None].float()).sum(dim=(1, 2))  # float32 sums
                      for b, clean, _ in runs)
            count = sum(float(b.attention_mask.sum()) for b, _, _ in runs)
            if self.parallel == "data":  # the mean over every rank's examples
                tot = all_reduce_sum(torch.as_tensor(tot, dtype=torch.float64))
                count = float(all_reduce_sum(torch.tensor([count], dtype=torch.float64)))
            mean = (tot / count).to(tm.dtype)[:, None, None, :]
        out = []
        for (b, clean, corr), sparse_base in zip(runs, bases):
            if ablation == "patching":
                ref = corr.senders
            elif ablation == "mean":
                ref = mean
            else:
                ref = torch.zeros(self.layout.n_senders, 1, 1, tm.adapter.d_model, device=tm.device, dtype=tm.dtype)
            out.append(PreparedBatch(b, ref, clean.logits, None if corr is None else corr.logits, sparse_base))
        return out

    # ------------------------------------------------------------------ the loop
    def evaluate(
        self,
        masks: KeepMask,
        metrics: Mapping[str, str | Callable] | None = None,
        *,
        progress: bool = False,
        resume_from: tuple[int, list[RunOutput]] | None = None,
        per_example: bool = False,
        around: KeepMask | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mean metrics over the data for each keep-mask: ``masks`` ``[K, E]`` -> ``{name: [K]}`` float64.

        ``metrics`` defaults to ``{"m": runner's metric}``. Each metric receives the answer-position
        logits ``[n, 1, V]``, the batch with ``answer_pos = 0`` and the clean logits there.
        ``resume_from = (layer, base_runs(mask))``: every mask equals that base mask on edges into
        layers before ``layer``, so those layers are not recomputed. With ``per_example`` the values
        are not averaged: ``{name: [K, N]}`` in the order of the data (for bootstrap intervals).
        ``around`` (a binary keep-mask ``[E]``): the masks differ from this circuit in a few edges, so the
        sparse forward works relative to its run (:meth:`~circuits.runtime.sparse.SparseBase.rebase`,
        cached for the last circuit) and computes only what those edges change; the values are the same.
        """
        masks = self.layout.keep_mask(masks)
        masks = masks[None] if masks.dim() == 1 else masks
        fns = {k: get_metric(v) for k, v in (metrics or {"m": self.metric}).items()}
        uniq, inverse = torch.unique(masks.detach().cpu(), dim=0, return_inverse=True)
        full = (uniq == 1.0).all(1)
        # removing every edge under corrupted-run patching is the corrupted run (tested identity)
        empty = (uniq == 0.0).all(1) & (self.ablation == "patching")
        if resume_from is not None:
            full = empty = torch.zeros_like(full)
        patched = (~full & ~empty).nonzero().flatten()
        if self.parallel == "masks":  # this rank's share of the masks; rank 0 also takes the full/empty ones
            patched = patched[self.mask_share(len(patched))]
            if world()[0] != 0:
                full, empty = torch.zeros_like(full), torch.zeros_like(empty)
        n_local = sum(len(p.batch) for p in self.prepared)
        values = {k: torch.zeros(len(uniq), n_local, dtype=torch.float64) for k in fns}  # [U, N_local]
        starts = [0]
        for p in self.prepared:
            starts.append(starts[-1] + len(p.batch))
        work = [(i, p, patched[c0:c0 + self.rows_per_forward(p)])
                for i, p in enumerate(self.prepared) for c0 in range(0, len(patched), self.rows_per_forward(p))]
        rebased = self.rebased(around) if around is not None and resume_from is None else None
        it: Iterable = work
        if progress and work and is_main():
            from tqdm.auto import tqdm

            it = tqdm(work, desc="patching", unit="chunk")
        with torch.no_grad(), self.tm.reusing_buffers():
            for i, p in enumerate(self.prepared):
                cols = slice(starts[i], starts[i + 1])
                for rows, logits in ((full, p.clean_logits), (empty, p.corrupted_logits)):
                    if bool(rows.any()):
                        for k, fn in fns.items():
                            values[k][rows, cols] = self.chunk_values(p, logits, 1, fn)
            # metrics that read only the answer tokens' logits: the forwards compute those columns alone
            columns = [answer_columns(fns.values(), p.batch) for p in self.prepared]
            for i, p, rows in it:
                resume = None
                if resume_from is not None:
                    layer, bases = resume_from
                    resume = Prefix(layer, bases[i].resid[layer], bases[i].senders)
                keep, c = uniq[rows].to(self.tm.device), columns[i]
                logits = (self.sparse_logits(p, keep, None if rebased is None else rebased[i], c)
                          if resume is None else None)
                if logits is None:
                    logits = self.patched_logits(p, keep, resume, c)
                for k, fn in fns.items():
                    values[k][rows, starts[i]:starts[i + 1]] = self.chunk_values(p, logits, len(rows), fn, c)
        if per_example:
            return {k: self.gather_masks(self.gather_examples(v))[inverse] for k, v in values.items()}
        return {k: (self.gather_masks(self.sum_examples(v.sum(1))) / self.n_examples)[inverse] for k, v in values.items()}

    def sparse_logits(self, p: PreparedBatch, keep: torch.Tensor, base: SparseBase | None = None,
                      columns: torch.Tensor | None = None) -> torch.Tensor | None:
        """Answer-position logits ``[K * B, 1, V]`` (or ``C`` ``columns``) of binary keep-masks ``[K, E]`` from the
        sparse masked forward (relative to ``base``, default ``p``'s clean run), or None where it does not
        apply (then the general patched forward runs). Masks that make more than :attr:`DENSE_SHARE` of the
        nodes computed take the general patched forward, which is cheaper for them."""
        if p.sparse is None or torch.is_grad_enabled() or not bool(((keep == 0) | (keep == 1)).all()):
            return None
        base = base or p.sparse
        plan = plan_states(self.layout, keep, base.around)
        dense = plan.computed_nodes() > self.DENSE_SHARE * self.layout.n_senders  # [K]
        if not bool(dense.any()):
            return sparse_logits(self.tm.blocks, self.layout, base, keep, self.sparse_stats, plan, self.tm.workspace,
                                 columns)
        shape = (len(p.batch), 1, p.clean_logits.shape[-1] if columns is None else len(columns))
        out = p.clean_logits.new_empty(len(keep), *shape)  # [K, B, 1, V or C]
        out[dense] = self.patched_logits(p, keep[dense], columns=columns).view(-1, *shape)
        if not bool(dense.all()):
            light = ~dense
            out[light] = sparse_logits(self.tm.blocks, self.layout, base, keep[light], self.sparse_stats,
                                       plan.select(light), self.tm.workspace, columns).view(-1, *shape)
        return out.view(-1, *shape[1:])

    def patched_logits(self, p: PreparedBatch, keep: torch.Tensor, resume: Prefix | None = None,
                       columns: torch.Tensor | None = None) -> torch.Tensor:
        """Answer-position logits ``[K * B, 1, V]`` (or ``C`` ``columns``) of keep-masks ``[K, E]`` from the
        general patched forward (optionally resumed from a recorded prefix)."""
        b = p.batch
        per = self.dense_masks_per_forward(p)
        return torch.cat([self.tm.run(b.clean, b.attention_mask, patch=Patch(keep[i:i + per], p.reference),
                                      logit_positions=b.answer_pos, logit_columns=columns, resume=resume).logits
                          for i in range(0, len(keep), per)])

    def dense_masks_per_forward(self, p: PreparedBatch) -> int:
        """Masks of batch ``p`` per general patched forward: :meth:`rows_per_forward`, and on the CPU at most as
        many as keep one layer's per-receiver inputs within :data:`circuits.planning.CPU_LAYER_BYTES`."""
        n = self.rows_per_forward(p)
        if self.tm.device.type != "cpu":
            return n
        B, P = p.batch.clean.shape
        return min(n, cpu_dense_masks(self.layout.n_heads, B, P, self.tm.adapter.d_model, p.reference.element_size()))

    def rebased(self, around: KeepMask) -> list[SparseBase] | None:
        """Every prepared batch's sparse base rebased on the binary circuit ``around`` ([E]); None where the
        sparse path does not apply or ``around`` is the full graph or not binary. The last one is cached."""
        keep = self.layout.keep_mask(around).detach().float().cpu().flatten()
        if not self.sparse or bool((keep == 1).all()) or not bool(((keep == 0) | (keep == 1)).all()):
            return None
        key = keep.bool().numpy().tobytes()
        if self._rebased is None or self._rebased[0] != key:
            self._rebased = None  # free the previous circuit's runs first
            dev = keep.to(self.tm.device)
            self._rebased = (key, [p.sparse.rebase(self.tm.blocks, self.layout, dev) for p in self.prepared])
        return self._rebased[1]

    # ------------------------------------------------------------------ across ranks (identity in one process)
    def sum_examples(self, total: torch.Tensor) -> torch.Tensor:
        """A sum over this rank's examples -> the sum over every example (all-reduced when the data is split)."""
        return all_reduce_sum(total) if self.parallel == "data" else total

    def gather_examples(self, values: torch.Tensor) -> torch.Tensor:
        """Per-example values ``[..., N_local]`` -> ``[..., N]`` in data order (gathered when the data is split)."""
        return gather_cat(values, dim=-1) if self.parallel == "data" else values

    def mask_share(self, n: int) -> slice:
        """The part of ``n`` masks (or edges) this rank evaluates: all of them unless the masks are split."""
        r = shard_range(n) if self.parallel == "masks" else range(n)
        return slice(r.start, r.stop)

    def gather_masks(self, values: torch.Tensor) -> torch.Tensor:
        """Rows computed by their owning rank (zeros elsewhere) -> every row on every rank."""
        return all_reduce_sum(values) if self.parallel == "masks" else values

    def metric_values(self, masks: KeepMask, progress: bool = False) -> torch.Tensor:
        """Mean of the runner's metric for each keep-mask ``[K, E]`` -> ``[K]`` float32."""
        return self.evaluate(masks, progress=progress)["m"].float()

    def rows_per_forward(self, p: PreparedBatch) -> int:
        """Masks of batch ``p`` per forward pass (``max_rows // B``, at least 1)."""
        return max(1, self.max_rows // len(p.batch))

    def chunk_values(self, p: PreparedBatch, logits: torch.Tensor, n: int, metric: Callable | None = None,
                     columns: torch.Tensor | None = None) -> torch.Tensor:
        """Metric of each of ``p``'s examples for each of ``n`` runs stacked mask-major:
        answer-position ``logits`` ``[n * B, 1, V]`` (or only the vocabulary ``columns``, ``[n * B, 1, C]``,
        from :func:`~circuits.metrics.answer_columns`) -> ``[n, B]`` float64 on the CPU."""
        fn = metric or self.metric
        b, clean = p.batch.repeat(n).at_answer(), p.clean_logits
        if columns is not None:
            b, clean = on_columns(b, columns), clean[..., columns]
        vals = fn(logits, b, clean.repeat(n, 1, 1)).float().view(n, len(p.batch))
        return vals.double().cpu()

    def chunk_metric(self, p: PreparedBatch, logits: torch.Tensor, n: int, metric: Callable | None = None,
                     columns: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`chunk_values` summed over the examples: ``[n]`` float64."""
        return self.chunk_values(p, logits, n, metric, columns).sum(1)

    def base_runs(self, mask: KeepMask) -> list[RunOutput]:
        """One recorded run per prepared batch under ``mask`` ([E]), to resume masked runs from."""
        keep = self.layout.keep_mask(mask).to(self.tm.device)
        with torch.no_grad():
            return [
                self.tm.run(p.batch.clean, p.batch.attention_mask, patch=Patch(keep, p.reference), record=True,
                            record_resid=True, logit_positions=p.batch.answer_pos)
                for p in self.prepared
            ]

    def badness(self, values: torch.Tensor) -> torch.Tensor:
        """Map metric values to 'lower is better' (for effects: effect = badness(patched) - badness(ref))."""
        return -values if self.higher else values

    def full_and_empty(self) -> tuple[float, float]:
        """``(m(N), m(∅))``: every edge kept, every edge removed."""
        E = self.layout.n_edges
        v = self.metric_values(torch.stack([torch.ones(E), torch.zeros(E)]))
        return float(v[0]), float(v[1])


def shard_data(tm: TracedModel, data: Task | Iterable[Batch], batch_size: int, split: bool = True) -> tuple[list[Batch], int]:
    """This rank's batches and the number of examples over all ranks.

    A Task is split by examples into contiguous shards in rank order, then batched; given batches
    are split by batch. With ``split=False`` (or one process) every rank keeps all the data. In a
    process group the ranks must hold the same model and data (checked: :class:`~circuits.parallel.RankMismatchError`).
    """
    rank, size = world()
    if isinstance(data, Task):
        if len(data) == 0:
            raise ValueError("the dataset is empty: the task has no examples")
        batches, n, units = None, len(data), len(data)  # a Task is shared out by examples
    else:
        batches = as_batches(data, batch_size)
        n, units = sum(len(b) for b in batches), len(batches)
    if size > 1:
        agree("the model", tm.fingerprint())
        agree("the data", (n, fingerprint(*(data.clean_ids, data.corrupted_ids, data.answers) if batches is None
                                          else [t for b in batches for t in (b.clean, b.corrupted, b.answers)])))
    span = range(units)
    if split and size > 1:
        if units < size:
            raise ValueError(f"{units} {'examples' if batches is None else 'batches'} cannot be shared by {size} "
                             "processes; use more examples or fewer processes")
        span = shard_range(units, rank, size)
    if batches is None:
        return list(data.batches(batch_size, span)), n
    return [batches[i] for i in span], n


def masked_metric(
    model: nn.Module | TracedModel,
    data: Task | Iterable[Batch],
    masks: KeepMask,
    metric: str | Callable | None = None,
    ablation: Ablation = "patching",
    batch_size: int = 16,
    max_rows: int | None = None,
) -> torch.Tensor:
    """Mean metric for each keep-mask ``[K, E]`` (or ``[E]``) -> ``[K]``."""
    return PatchRunner(model, data, metric, ablation, batch_size, max_rows).metric_values(masks)
