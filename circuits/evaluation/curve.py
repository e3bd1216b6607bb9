"""Faithfulness curves over circuit sizes (MIB's CPR / CMD).

A curve evaluates ``f`` at MIB's fractions ``k`` with ``n_k = int(k * E)`` and the circuit
``topn(n_k)`` followed by dangling-edge removal; its areas use the trapezoid rule on a linear
``k`` axis, not normalized (the ``k`` span is 0.999), with no ``k = 0`` point:
``CPR = Σ (k_{i+1} - k_i) (f_i + f_{i+1}) / 2`` and ``CMD`` the same over ``|1 - f|``
(as MIB circuit track's ``evaluate_area_under_curve``: ``area_under`` and ``area_from_100``).
All circuits of a curve go through one batched evaluation on one runner.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..circuit import topn_masks
from ..graph import Graph
from ..io import atomic_write_text, json_safe
from ..patching import PatchRunner
from ..runtime import TracedModel
from ..tasks import Batch, Task
from .faithfulness import MIB_FRACTIONS, check_same_model, normalized_faithfulness

__all__ = ["Curve", "CurveKind", "trapezoid_area", "cpr", "cmd", "curve_masks", "faithfulness_curve", "curves_to_csv"]

CurveKind = Literal["CPR", "CMD"]
"""``CPR``: circuits ranked by signed scores, area under f (higher is better); ``CMD``: ranked by
``|score|``, area under ``|1 - f|`` (lower is better)."""


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
        return json_safe(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Curve:
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
    max_rows: int | None = None,
    runner: PatchRunner | None = None,
    method: str | None = None,
    progress: bool = False,
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
    check_same_model(graph, r)
    circuits, requested = curve_masks(graph, fr, absolute)
    E = graph.n_edges
    masks = torch.cat([torch.ones(1, E), torch.zeros(1, E), circuits.float()])
    vals = r.evaluate(masks, progress=progress)["m"].tolist()
    m_full, m_empty, m_c = vals[0], vals[1], vals[2:]
    f = normalized_faithfulness(np.asarray(m_c), m_full, m_empty).tolist()
    kind = "CMD" if absolute else "CPR"
    curve = Curve(
        fractions=fr, n_edges=circuits.sum(1).tolist(), faithfulness=f, kind=kind, area=0.0,
        n_requested=requested, values=m_c, m_full=m_full, m_empty=m_empty, total_edges=E,
        method=method or graph.provenance.method or "unknown", metric=r.metric_name, ablation=r.ablation,
    )
    curve.area = cmd(curve) if absolute else cpr(curve)
    curve.seconds = round(time.perf_counter() - t0, 4)
    return curve


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
