"""Faithfulness of circuits, MIB curves (CPR / CMD), ROC against ground truth, plots.

Definitions (REFERENCE §3, docs/evaluation.md):

* normalized faithfulness ``f(C) = (m(C) - m(∅)) / (m(N) - m(∅))`` where each ``m`` is the
  *mean* metric over the examples (a ratio of means, as in MIB); ``m(N)`` keeps every edge,
  ``m(∅)`` removes every edge, ``m(C)`` keeps the circuit's edges only;
* a curve evaluates ``f`` at MIB's fractions ``k`` with ``n_k = int(k * E)`` and the circuit
  ``topn(n_k)`` followed by dangling-edge removal; its areas use the trapezoid rule on a linear
  ``k`` axis, not normalized (the ``k`` span is 0.999), with no ``k = 0`` point:
  ``CPR = Σ (k_{i+1} - k_i) (f_i + f_{i+1}) / 2`` and ``CMD`` the same over ``|1 - f|``
  (exactly MIB-circuit-track's ``evaluate_area_under_curve``: ``area_under`` and ``area_from_100``).

All circuits of one evaluation share a single :class:`~circuits.patching.PatchRunner` (the
clean/corrupted runs are computed once) and go through one batched masked evaluation.
Identical masks are evaluated once, and the all-edges mask reuses the clean run's logits.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from .graph import Graph
from .io import atomic_path, atomic_write_text
from .metrics import accuracy, answer_position_logits, get_metric, kl_div
from .patching import PatchRunner, _repeat_batch
from .prune import remove_dangling, topn_masks
from .runtime import TracedModel
from .tasks.base import Batch, Task

__all__ = [
    "MIB_FRACTIONS",
    "NORMALIZATION_RTOL",
    "CircuitReport",
    "Curve",
    "RocResult",
    "normalized_faithfulness",
    "patched_metrics",
    "evaluate_circuit",
    "faithfulness_curve",
    "curve_masks",
    "trapezoid_area",
    "cpr",
    "cmd",
    "roc",
    "node_roc",
    "node_scores_max",
    "plot_curves",
    "plot_roc",
    "curves_to_csv",
]

MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""MIB circuit track's edge fractions ``k``."""

NORMALIZATION_RTOL = 1e-6
"""``|m(N) - m(∅)| <= NORMALIZATION_RTOL * max(|m(N)|, |m(∅)|)`` counts as zero (metric values are
float32, whose epsilon is 1.2e-7, so a smaller tolerance would let rounding noise through)."""


# ============================================================================================== faithfulness
def normalized_faithfulness(m_circuit: float | np.ndarray, m_full: float, m_empty: float,
                            rtol: float = NORMALIZATION_RTOL) -> float | np.ndarray:
    """``(m(C) - m(∅)) / (m(N) - m(∅))``; raises ``ValueError`` when ``m(N) ≈ m(∅)`` (never divides by ~0)."""
    span = float(m_full) - float(m_empty)
    if not math.isfinite(span):
        raise ValueError(f"normalization undefined: m(N) = {m_full!r}, m(∅) = {m_empty!r} (not finite)")
    if abs(span) <= rtol * max(abs(float(m_full)), abs(float(m_empty))) or span == 0.0:
        raise ValueError(
            f"normalization undefined: m(N) = m(∅) = {float(m_full):.9g} (the full model and the fully ablated model "
            "score the same, so faithfulness cannot be normalized; check that the corrupted prompts actually "
            "change the answer, or use another metric / ablation)"
        )
    if isinstance(m_circuit, np.ndarray):
        return (m_circuit - float(m_empty)) / span + 0.0  # + 0.0 turns -0.0 into 0.0
    return (float(m_circuit) - float(m_empty)) / span + 0.0


def _metric_name(metric: str | Callable | None, data: Any, runner: PatchRunner) -> str:
    if isinstance(metric, str):
        return metric
    if metric is None and isinstance(data, Task):
        return data.metric
    return str(getattr(runner.metric, "__name__", "custom"))


def _model_name(runner: PatchRunner) -> str:
    cfg = getattr(runner.tm.model, "config", None)
    name = getattr(cfg, "_name_or_path", "") or getattr(cfg, "model_type", "") if cfg is not None else ""
    return str(name or type(runner.tm.model).__name__)


def _check_structure(graph: Graph, runner: PatchRunner) -> None:
    g = runner.graph
    if (graph.n_layers, graph.n_heads, graph.parallel_attn_mlp) != (g.n_layers, g.n_heads, g.parallel_attn_mlp):
        raise ValueError(
            f"the graph ({graph.n_layers} layers x {graph.n_heads} heads, parallel={graph.parallel_attn_mlp}) does not "
            f"match the model ({g.n_layers} x {g.n_heads}, parallel={g.parallel_attn_mlp})"
        )


def patched_metrics(runner: PatchRunner, masks: torch.Tensor, metrics: Mapping[str, str | Callable]
                    ) -> dict[str, torch.Tensor]:
    """Several mean metrics from the same patched logits: masks ``[K, E]`` -> ``{name: [K]}`` (float64).

    Same machinery as :meth:`PatchRunner.metric_values` (the runner's prepared clean and
    reference runs, ``max_rows`` chunking) with two savings: duplicate masks are evaluated
    once, an all-ones mask takes the clean run's logits (no patched forward; keeping
    every edge is the clean run by definition) and, when removed edges read the corrupted
    run, an all-zeros mask takes the corrupted run's logits (patching every edge reproduces
    the corrupted run; tests/test_runtime.py checks it). Metrics receive logits and clean logits
    cut to the answer position (``[B', 1, V]`` with ``answer_pos = 0``), so the clean logits
    are not repeated in full for every mask; when the runtime supports it, the patched run
    unembeds only those positions.
    """
    g = runner.graph
    masks = g.edge_mask(masks)
    if masks.dim() == 1:
        masks = masks[None]
    fns = {k: get_metric(v) for k, v in metrics.items()}
    uniq, inverse = torch.unique(masks.cpu(), dim=0, return_inverse=True)
    full = (uniq == 1.0).all(1)
    # removing every edge under corrupted-run patching is the corrupted run (tested identity)
    empty = (uniq == 0.0).all(1) & (runner.ablation == "patching")
    patched_rows = (~full & ~empty).nonzero().flatten()
    U = uniq.shape[0]
    totals = {k: torch.zeros(U, dtype=torch.float64) for k in fns}
    run_kw = _logit_position_kwarg(runner.tm)
    with torch.no_grad():
        for p in runner.prepared:
            b = p.batch
            P = b.clean.shape[1]
            ref = p.reference
            if ref.shape[2] != P:  # mean/zero references are [S, 1, 1, d]: broadcast as a view
                ref = ref.expand(-1, -1, P, -1)
            clean_at = _at_answer(p.clean_logits, b)  # [B, 1, V]: all a metric may read of the clean run
            b0 = _answer_at_zero(b)
            if bool(full.any()):
                for k, fn in fns.items():
                    totals[k][full] += float(fn(clean_at, b0, clean_at).float().sum())
            if bool(empty.any()):
                corr_at = _at_answer(p.corrupted_logits, b)
                for k, fn in fns.items():
                    totals[k][empty] += float(fn(corr_at, b0, clean_at).float().sum())
            per = max(1, runner.max_rows // len(b))
            for c0 in range(0, len(patched_rows), per):
                rows = patched_rows[c0: c0 + per]
                n = len(rows)
                patch = (1.0 - uniq[rows]).to(runner.tm.device)
                kw = {run_kw: b.answer_pos} if run_kw else {}
                out = runner.tm.run(b.clean, b.attention_mask, corrupted=ref, patch=patch, **kw)
                rb = _repeat_batch(b, n)
                logits_at = _at_answer(out.logits, rb)
                rb0, clean_rep = _answer_at_zero(rb), clean_at.repeat(n, 1, 1)
                for k, fn in fns.items():
                    vals = fn(logits_at, rb0, clean_rep).float().view(n, len(b))
                    totals[k][rows] += vals.sum(1).double().cpu()
    return {k: (t / runner.n_examples)[inverse] for k, t in totals.items()}


def _logit_position_kwarg(tm: TracedModel) -> str | None:
    """``"logit_positions"`` when this runtime can unembed only the answer positions, else None."""
    return "logit_positions" if "logit_positions" in inspect.signature(tm.run).parameters else None


def _at_answer(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``[B, 1, V]`` logits at the answer positions, from full ``[B, P, V]`` or already-cut ``[B, 1, V]`` logits."""
    if logits.shape[1] == batch.clean.shape[1]:
        return answer_position_logits(logits, batch)[:, None]
    if logits.shape[1] != 1:
        raise ValueError(f"logits of shape {tuple(logits.shape)} match neither the prompt length nor one position")
    return logits.float()


def _answer_at_zero(batch: Batch) -> Batch:
    """The batch as seen by a metric on logits cut to the answer positions."""
    return dataclasses.replace(batch, answer_pos=torch.zeros_like(batch.answer_pos))


# ============================================================================================== curves
def trapezoid_area(x: Sequence[float], y: Sequence[float]) -> float:
    """``Σ (x_{i+1} - x_i) (y_i + y_{i+1}) / 2`` (no normalization, no extra end points)."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {xa.shape} and {ya.shape}")
    if len(xa) < 2:
        return 0.0
    return float(np.sum(np.diff(xa) * (ya[1:] + ya[:-1]) / 2.0))


@dataclass
class Curve:
    """Faithfulness at a series of edge fractions (one MIB curve).

    ``kind`` is ``"CPR"`` for a curve ranked by signed scores (``area`` = :func:`cpr`, higher is
    better) and ``"CMD"`` for absolute scores (``area`` = :func:`cmd`, lower is better).
    ``n_requested[i] = int(fractions[i] * E)``; ``n_edges[i]`` counts edges after pruning.
    ``values`` are the raw ``m(C_k)``.
    """

    fractions: list[float]
    n_edges: list[int]
    faithfulness: list[float]
    kind: str
    area: float
    n_requested: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    m_full: float = float("nan")
    m_empty: float = float("nan")
    total_edges: int = 0
    method: str = ""
    metric: str = ""
    ablation: str = "patching"
    seconds: float = 0.0

    @property
    def cpr(self) -> float:
        return cpr(self)

    @property
    def cmd(self) -> float:
        return cmd(self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpr"], d["cmd"] = self.cpr, self.cmd
        return _json_safe(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Curve":
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("m_full", "m_empty", "area"):
            if k in kw and kw[k] is None:
                kw[k] = float("nan")
        kw["faithfulness"] = [float("nan") if v is None else float(v) for v in kw.get("faithfulness", [])]
        return cls(**kw)


def cpr(curve: Curve) -> float:
    """Circuit performance ratio: trapezoid area under ``f`` over ``k`` (MIB ``area_under``)."""
    return trapezoid_area(curve.fractions, curve.faithfulness)


def cmd(curve: Curve) -> float:
    """Circuit-model difference: trapezoid area under ``|1 - f|`` over ``k`` (MIB ``area_from_100``)."""
    return trapezoid_area(curve.fractions, [abs(1.0 - f) for f in curve.faithfulness])


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    fr = [float(k) for k in fractions]
    if not fr:
        raise ValueError("fractions is empty")
    bad = [k for k in fr if not 0.0 < k <= 1.0]
    if bad:
        raise ValueError(f"fractions must be in (0, 1], got {bad}")
    if any(b <= a for a, b in zip(fr, fr[1:])):
        raise ValueError(f"fractions must be strictly increasing, got {fr}")
    return fr


def curve_masks(graph: Graph, fractions: Sequence[float] = MIB_FRACTIONS, absolute: bool = False
                ) -> tuple[torch.Tensor, list[int]]:
    """Circuit masks ``[len(fractions), E]`` (``topn(int(k E))`` then pruning, on copies) and the n requested."""
    fr = _check_fractions(fractions)
    requested = [int(k * graph.n_edges) for k in fr]
    return topn_masks(graph, requested, absolute=absolute, prune=True), requested


def faithfulness_curve(
    model: nn.Module | TracedModel,
    graph: Graph,
    data: Task | Iterable[Batch],
    fractions: Sequence[float] = MIB_FRACTIONS,
    absolute: bool = False,
    metric: str | Callable | None = None,
    ablation: str = "patching",
    batch_size: int = 16,
    *,
    max_rows: int = 512,
    runner: PatchRunner | None = None,
    method: str | None = None,
) -> Curve:
    """MIB curve: ``f`` of ``topn(int(k E))`` + pruning for each ``k`` in ``fractions``.

    ``absolute=False`` ranks by signed scores (``kind="CPR"``), ``absolute=True`` by ``|score|``
    (``kind="CMD"``); MIB reports CPR from the signed ranking and CMD from the absolute one.
    All circuits, the full and the empty graph go through one batched evaluation on one runner
    (pass ``runner`` to reuse prepared runs across calls; its metric, ablation and batching
    then override ``metric``, ``ablation``, ``batch_size``). ``graph`` is not modified.
    """
    t0 = time.perf_counter()
    fr = _check_fractions(fractions)
    r = runner or PatchRunner(model, data, metric, ablation, batch_size, max_rows)
    _check_structure(graph, r)
    circuits, requested = curve_masks(graph, fr, absolute)
    E = graph.n_edges
    masks = torch.cat([torch.ones(1, E), torch.zeros(1, E), circuits.float()])
    vals = patched_metrics(r, masks, {"m": r.metric})["m"].tolist()
    m_full, m_empty, m_c = vals[0], vals[1], vals[2:]
    f = normalized_faithfulness(np.asarray(m_c), m_full, m_empty).tolist()
    kind = "CMD" if absolute else "CPR"
    curve = Curve(
        fractions=fr, n_edges=circuits.sum(1).tolist(), faithfulness=f, kind=kind, area=0.0,
        n_requested=requested, values=m_c, m_full=m_full, m_empty=m_empty, total_edges=E,
        method=method or _graph_method(graph), metric=_metric_name(metric, data, r), ablation=r.ablation,
    )
    curve.area = cmd(curve) if absolute else cpr(curve)
    curve.seconds = round(time.perf_counter() - t0, 4)
    return curve


def _graph_method(graph: Graph) -> str:
    att = graph.meta.get("attribution")
    if isinstance(att, dict) and att.get("method"):
        return str(att["method"])
    return str(graph.meta.get("method", "unknown"))


# ============================================================================================== report
@dataclass
class CircuitReport:
    """Evaluation of one circuit (JSON-serializable with :meth:`to_dict` / :meth:`to_json`).

    ``faithfulness = (m_circuit - m_empty) / (m_full - m_empty)`` with mean metric values;
    ``kl_to_full`` is the mean ``KL(full || circuit)`` of the next-token distribution at the
    answer position (nats); ``accuracy`` is the circuit run's accuracy (``accuracy_full`` the
    full model's). ``edges`` / ``nodes`` list the evaluated (pruned) circuit.
    """

    method: str
    model: str
    task: str
    metric: str
    n_edges: int
    n_nodes: int
    edges: list[str]
    nodes: list[str]
    m_full: float
    m_empty: float
    m_circuit: float
    faithfulness: float
    kl_to_full: float
    accuracy: float
    ablation: str
    accuracy_full: float = float("nan")
    curve: Curve | None = None
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "curve"}
        d["curve"] = None if self.curve is None else self.curve.to_dict()
        d["format"] = "circuits.report"
        d["version"] = 1
        return _json_safe(d)

    def to_json(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write :meth:`to_dict` atomically (strict JSON: NaN is written as null)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False), overwrite=overwrite)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CircuitReport":
        if d.get("format", "circuits.report") != "circuits.report":
            raise ValueError(f"not a circuits report (format={d.get('format')!r})")
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("m_full", "m_empty", "m_circuit", "faithfulness", "kl_to_full", "accuracy", "accuracy_full"):
            if kw.get(k, 0.0) is None:
                kw[k] = float("nan")
        if kw.get("curve") is not None:
            kw["curve"] = Curve.from_dict(kw["curve"])
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str | Path) -> "CircuitReport":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def evaluate_circuit(
    model: nn.Module | TracedModel,
    graph: Graph,
    data: Task | Iterable[Batch],
    metric: str | Callable | None = None,
    ablation: str = "patching",
    batch_size: int = 16,
    *,
    prune: bool = True,
    max_rows: int = 512,
    runner: PatchRunner | None = None,
    method: str | None = None,
    curve: Curve | None = None,
) -> CircuitReport:
    """Evaluate ``graph.in_circuit`` as a circuit.

    With ``prune`` (default, as MIB's ``evaluate_graph``) dangling edges are removed first, on
    a copy (``graph`` is not modified). ``m(N)``, ``m(∅)``, ``m(C)``, the KL to the full model
    and the accuracy all come from one batched evaluation on one :class:`PatchRunner`.
    A given ``runner`` overrides ``metric``, ``ablation`` and ``batch_size``. Raises
    ``ValueError`` when ``m(N) ≈ m(∅)`` (see :func:`normalized_faithfulness`).
    """
    t0 = time.perf_counter()
    r = runner or PatchRunner(model, data, metric, ablation, batch_size, max_rows)
    t1 = time.perf_counter()
    _check_structure(graph, r)
    circuit = graph.copy()
    if prune:
        remove_dangling(circuit)
    E = graph.n_edges
    masks = torch.stack([torch.ones(E), torch.zeros(E), circuit.in_circuit.float()])
    vals = patched_metrics(r, masks, {"m": r.metric, "kl_div": kl_div, "accuracy": accuracy})
    t2 = time.perf_counter()
    m_full, m_empty, m_circ = (float(v) for v in vals["m"])
    f = normalized_faithfulness(m_circ, m_full, m_empty)
    nodes = circuit.circuit_nodes()
    return CircuitReport(
        method=method or _graph_method(graph),
        model=_model_name(r),
        task=data.name if isinstance(data, Task) else "batches",
        metric=_metric_name(metric, data, r),
        n_edges=circuit.n_circuit_edges,
        n_nodes=len(nodes),
        edges=circuit.circuit_edges(),
        nodes=nodes,
        m_full=m_full,
        m_empty=m_empty,
        m_circuit=m_circ,
        faithfulness=float(f),
        kl_to_full=float(vals["kl_div"][2]),
        accuracy=float(vals["accuracy"][2]),
        accuracy_full=float(vals["accuracy"][0]),
        ablation=r.ablation,
        curve=curve,
        timings={"prepare_s": round(t1 - t0, 4), "evaluate_s": round(t2 - t1, 4), "total_s": round(t2 - t0, 4)},
        settings={
            "prune": prune, "batch_size": batch_size, "max_rows": r.max_rows, "n_examples": r.n_examples,
            "edges_before_pruning": graph.n_circuit_edges, "total_edges": E,
            "selection": graph.meta.get("selection"),
        },
    )


# ============================================================================================== ROC
@dataclass
class RocResult:
    """ROC curve (``fpr``, ``tpr`` from (0, 0) to (1, 1)), the score ``thresholds`` of its points
    (``+inf`` for the first), and ``auc`` = Mann-Whitney U / (n_pos n_neg), ties counted half."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float
    n_pos: int
    n_neg: int

    def to_dict(self) -> dict[str, Any]:
        return _json_safe({"fpr": self.fpr.tolist(), "tpr": self.tpr.tolist(), "thresholds": self.thresholds.tolist(),
                           "auc": self.auc, "n_pos": self.n_pos, "n_neg": self.n_neg})


def _roc_arrays(scores: np.ndarray, truth: np.ndarray) -> RocResult:
    if scores.shape != truth.shape or scores.ndim != 1:
        raise ValueError(f"scores and truth must be 1-D of equal length, got {scores.shape} and {truth.shape}")
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} scores are NaN")
    P, N = int(truth.sum()), int((~truth).sum())
    if P == 0 or N == 0:
        raise ValueError(f"ROC needs positives and negatives in the ground truth, got {P} positive and {N} negative")
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    tp, fp = np.cumsum(t), np.cumsum(~t)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each run of tied scores
    tpr = np.r_[0.0, tp[last] / P]
    fpr = np.r_[0.0, fp[last] / N]
    thresholds = np.r_[np.inf, s[last]]
    ranks = rankdata(scores)  # average ranks: ties count half
    auc = float((ranks[truth].sum() - P * (P + 1) / 2.0) / (P * N))
    return RocResult(fpr, tpr, thresholds, auc, P, N)


def _edge_truth(graph: Graph | None, truth: torch.Tensor | np.ndarray | Graph | Iterable[str], n_edges: int) -> np.ndarray:
    if isinstance(truth, Graph):
        if graph is not None and (truth.n_layers, truth.n_heads, truth.parallel_attn_mlp) != (
                graph.n_layers, graph.n_heads, graph.parallel_attn_mlp):
            raise ValueError(f"ground-truth graph {truth!r} has another structure than the scored graph {graph!r}")
        if truth.n_edges != n_edges:
            raise ValueError(f"ground-truth graph {truth!r} has {truth.n_edges} edges, the scores have {n_edges}")
        return truth.in_circuit.cpu().numpy().astype(bool)
    if isinstance(truth, (torch.Tensor, np.ndarray)):
        t = np.asarray(truth.cpu() if isinstance(truth, torch.Tensor) else truth)
        if t.shape != (n_edges,):
            raise ValueError(f"a ground-truth mask must have shape [{n_edges}], got {t.shape}")
        return t.astype(bool)
    if graph is None:
        raise ValueError("ground truth given as edge names: pass scores as a Graph (or graph=...) to resolve them")
    names = [truth] if isinstance(truth, str) else list(truth)
    index = {n: i for i, n in enumerate(graph.edge_names())}
    unknown = [n for n in names if n not in index]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ValueError(f"ground truth names {len(unknown)} edge(s) the graph does not have: {shown} "
                         f"(graph: {graph.n_layers} layers x {graph.n_heads} heads; names look like 'a0.h1->a1.h2<k>')")
    t = np.zeros(n_edges, dtype=bool)
    t[[index[n] for n in names]] = True
    return t


def roc(scores: Graph | torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray | Graph | Iterable[str],
        absolute: bool = True, graph: Graph | None = None) -> RocResult:
    """Edge-level ROC of ``scores`` against a ground-truth circuit.

    ``scores``: a Graph (its ``scores``) or ``[E]`` values (then pass ``graph`` to resolve edge
    names). ``truth``: a bool ``[E]`` mask, a ground-truth Graph (its ``in_circuit``) or edge
    names. Edges are ranked by ``|score|`` when ``absolute``. The curve has one point per
    distinct score (tied edges enter together); the AUC is the Mann-Whitney statistic with
    average ranks, which equals the trapezoid area of that curve.
    """
    if isinstance(scores, Graph):
        graph = scores if graph is None else graph
        s = scores.scores.detach().cpu().double().numpy()
    else:
        s = np.asarray(scores.detach().cpu().double() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    t = _edge_truth(graph, truth, len(s))
    return _roc_arrays(np.abs(s) if absolute else s, t)


def _node_truth(graph: Graph, truth: torch.Tensor | np.ndarray | Graph | Iterable[str]) -> np.ndarray:
    if isinstance(truth, Graph):
        if (truth.n_layers, truth.n_heads, truth.parallel_attn_mlp) != (graph.n_layers, graph.n_heads, graph.parallel_attn_mlp):
            raise ValueError(f"ground-truth graph {truth!r} has another structure than the scored graph {graph!r}")
        return truth.node_in_circuit().numpy()
    if isinstance(truth, (torch.Tensor, np.ndarray)):
        t = np.asarray(truth.cpu() if isinstance(truth, torch.Tensor) else truth).astype(bool)
        if t.shape != (graph.n_nodes,):
            raise ValueError(f"a ground-truth node mask must have shape [{graph.n_nodes}] (graph.nodes), got {t.shape}")
        return t
    names = [truth] if isinstance(truth, str) else list(truth)
    index = {n: i for i, n in enumerate(graph.nodes)}
    unknown = [n for n in names if n not in index]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ValueError(f"ground truth names {len(unknown)} node(s) the graph does not have: {shown} "
                         f"(graph: {graph.n_layers} layers x {graph.n_heads} heads; nodes look like 'a3.h5', 'm7')")
    t = np.zeros(graph.n_nodes, dtype=bool)
    t[[index[n] for n in names]] = True
    return t


def node_scores_max(graph: Graph) -> torch.Tensor:
    """``[N]`` node score: the max ``|score|`` over the node's incoming and outgoing edges."""
    a = graph.scores.detach().float().abs().cpu()
    out = torch.zeros(graph.n_nodes)
    out.scatter_reduce_(0, graph.edge_sender, a, reduce="amax")
    out.scatter_reduce_(0, graph.receiver_node[graph.edge_receiver], a, reduce="amax")
    return out


def node_roc(graph_scores: Graph, truth_nodes: torch.Tensor | np.ndarray | Graph | Iterable[str],
             include_io: bool = False) -> RocResult:
    """Node-level ROC: node score = max ``|score|`` over the node's incident edges (in and out).

    ``truth_nodes``: node names (``'a9.h9'``, ``'m3'``), a bool ``[N]`` mask over ``graph.nodes``
    or a ground-truth Graph (nodes touched by its circuit). ``input`` and ``logits`` belong to
    every circuit, so they are left out unless ``include_io`` (naming them is allowed).
    """
    t = _node_truth(graph_scores, truth_nodes)
    s = node_scores_max(graph_scores).double().numpy()
    keep = np.ones(graph_scores.n_nodes, dtype=bool)
    if not include_io:
        keep[0] = keep[graph_scores.n_senders] = False
    return _roc_arrays(s[keep], t[keep])


# ============================================================================================== output
def _json_safe(x: Any) -> Any:
    """Replace NaN/inf floats by None, numpy/tensor scalars by Python ones, recursively."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, torch.Tensor):
        return _json_safe(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _figure_format(path: Path) -> str:
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise ValueError(f"plot path must end in .png, .svg or .pdf, got {path.name!r}")
    return fmt


def _save_figure(fig: Any, path: str | Path) -> Path:
    p = Path(path)
    fmt = _figure_format(p)
    with atomic_path(p) as tmp:
        fig.savefig(tmp, format=fmt, bbox_inches="tight", dpi=150)
    return p


def _new_figure(w: float = 6.4, h: float = 4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)  # Agg canvas: no display, no pyplot global state
    return fig


def plot_curves(curves: Mapping[str, Curve], path: str | Path, title: str | None = None) -> Path:
    """Faithfulness vs edge fraction for several methods on one plot (log-scaled ``k`` axis for
    readability; the areas in the legend are on the linear axis, as defined). PNG/SVG/PDF by suffix."""
    if not curves:
        raise ValueError("no curves to plot")
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, c in curves.items():
        ax.plot(c.fractions, c.faithfulness, marker="o", ms=3, label=f"{name} ({c.kind} {c.area:.3f})")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of edges k (log scale)")
    ax.set_ylabel("normalized faithfulness f")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save_figure(fig, path)


def plot_roc(results: Mapping[str, RocResult], path: str | Path, title: str | None = None) -> Path:
    """ROC curves of several methods with their AUC in the legend. PNG/SVG/PDF by suffix."""
    if not results:
        raise ValueError("no ROC results to plot")
    fig = _new_figure(5.2, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    for name, r in results.items():
        ax.plot(r.fpr, r.tpr, drawstyle="default", label=f"{name} (AUC {r.auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save_figure(fig, path)


def curves_to_csv(curves: Mapping[str, Curve], path: str | Path) -> Path:
    """One row per (method, fraction): method, kind, fraction, n_requested, n_edges, m_circuit,
    faithfulness, area, cpr, cmd. Written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "kind", "fraction", "n_requested", "n_edges", "m_circuit", "faithfulness", "area", "cpr", "cmd"])
    for name, c in curves.items():
        req = c.n_requested or [""] * len(c.fractions)
        vals = c.values or [""] * len(c.fractions)
        for k, nr, ne, v, f in zip(c.fractions, req, c.n_edges, vals, c.faithfulness):
            w.writerow([name, c.kind, repr(k), nr, ne, v, f, c.area, c.cpr, c.cmd])
    return atomic_write_text(path, buf.getvalue())
