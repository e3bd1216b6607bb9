"""Evaluation of one circuit: faithfulness, KL to the full model, accuracy, as a JSON report."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..circuit import remove_dangling
from ..graph import Graph
from ..io import atomic_write_text, json_safe
from ..metrics import accuracy, kl_div, top1
from ..patching import Ablation, PatchRunner
from ..runtime import TracedModel
from ..tasks import Batch, Task
from .curve import Curve
from .faithfulness import check_same_model, model_name, normalized_faithfulness

__all__ = ["CircuitReport", "bootstrap_faithfulness", "evaluate_circuit"]


@dataclass
class CircuitReport:
    """Evaluation of one circuit (JSON-serializable with :meth:`to_dict` / :meth:`to_json`).

    ``faithfulness = (m_circuit - m_empty) / (m_full - m_empty)`` with mean metric values, and
    ``faithfulness_ci`` its 95 % bootstrap interval over the ``n_examples`` examples (1,000
    resamples, seed 0); ``kl_to_full`` is the mean ``KL(full || circuit)`` of the next-token
    distribution at the answer position (nats); ``accuracy`` is the ``accuracy`` metric (the best
    answer's logit beats the best listed wrong answer's) and ``top1`` the share of examples whose
    greedy prediction over the whole vocabulary is an answer, each for the circuit run (``*_full``:
    the full model). ``edges`` / ``nodes`` list the evaluated (pruned) circuit. ``search`` records how a
    circuit was sized to a faithfulness target (probes, refinement; see :func:`circuits.discover`).
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
    top1: float = float("nan")
    top1_full: float = float("nan")
    faithfulness_ci: list[float] | None = None
    n_examples: int = 0
    search: dict[str, Any] | None = None
    curve: Curve | None = None
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "curve"}
        d["curve"] = None if self.curve is None else self.curve.to_dict()
        d["format"] = "circuits.report"
        d["version"] = 1
        return json_safe(d)

    def to_json(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write :meth:`to_dict` atomically (strict JSON: NaN is written as null)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False), overwrite=overwrite)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CircuitReport:
        if d.get("format", "circuits.report") != "circuits.report":
            raise ValueError(f"not a circuits report (format={d.get('format')!r})")
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("m_full", "m_empty", "m_circuit", "faithfulness", "kl_to_full", "accuracy", "accuracy_full", "top1",
                  "top1_full"):
            if kw.get(k, 0.0) is None:
                kw[k] = float("nan")
        if kw.get("curve") is not None:
            kw["curve"] = Curve.from_dict(kw["curve"])
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str | Path) -> CircuitReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def evaluate_circuit(
    model: nn.Module | TracedModel,
    graph: Graph,
    data: Task | Iterable[Batch],
    metric: str | Callable | None = None,
    ablation: Ablation = "patching",
    batch_size: int = 16,
    *,
    prune: bool = True,
    max_rows: int | None = None,
    sparse: bool = True,
    runner: PatchRunner | None = None,
    method: str | None = None,
    curve: Curve | None = None,
    progress: bool = False,
) -> CircuitReport:
    """Evaluate ``graph.in_circuit`` as a circuit.

    With ``prune`` (default, as MIB's ``evaluate_graph``) dangling edges are removed first
    (``graph`` itself is not changed). ``m(N)``, ``m(∅)``, ``m(C)``, the KL to the full model
    and the accuracy all come from one batched evaluation on one :class:`PatchRunner`.
    A given ``runner`` overrides ``metric``, ``ablation``, ``batch_size``, ``max_rows`` and ``sparse``
    (:class:`PatchRunner`'s). Raises
    ``ValueError`` when ``m(N) ≈ m(∅)`` (see :func:`normalized_faithfulness`).
    """
    t0 = time.perf_counter()
    r = runner or PatchRunner(model, data, metric, ablation, batch_size, max_rows, sparse=sparse)
    t1 = time.perf_counter()
    check_same_model(graph, r)
    circuit = remove_dangling(graph) if prune else graph
    E = graph.n_edges
    masks = torch.stack([torch.ones(E), torch.zeros(E), circuit.keep_mask()])
    per = r.evaluate(masks, {"m": r.metric, "kl_div": kl_div, "accuracy": accuracy, "top1": top1}, per_example=True,
                     progress=progress)
    vals = {k: v.mean(1) for k, v in per.items()}  # [3]: full, empty, circuit
    t2 = time.perf_counter()
    m_full, m_empty, m_circ = (float(v) for v in vals["m"])
    f = normalized_faithfulness(m_circ, m_full, m_empty)
    ci = bootstrap_faithfulness(per["m"])
    nodes = circuit.circuit_nodes()
    return CircuitReport(
        method=method or graph.provenance.method or "unknown",
        model=model_name(r),
        task=data.name if isinstance(data, Task) else "batches",
        metric=r.metric_name,
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
        top1=float(vals["top1"][2]),
        top1_full=float(vals["top1"][0]),
        faithfulness_ci=ci,
        n_examples=r.n_examples,
        ablation=r.ablation,
        curve=curve,
        timings={"prepare_s": round(t1 - t0, 4), "evaluate_s": round(t2 - t1, 4)},
        settings={
            "prune": prune, "batch_size": batch_size, "max_rows": r.max_rows, "n_examples": r.n_examples,
            "edges_before_pruning": graph.n_circuit_edges, "total_edges": E,
            "selection": None if graph.provenance.selection is None else asdict(graph.provenance.selection),
        },
    )


def bootstrap_faithfulness(values: torch.Tensor, n_resamples: int = 1000, seed: int = 0,
                           level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of ``f`` over examples: ``values`` ``[3, N]`` = per-example metric of
    the full graph, the empty graph and the circuit. Each resample draws ``N`` examples with replacement
    and recomputes ``f`` as a ratio of means; resamples where ``m(N) = m(∅)`` are skipped. None when
    fewer than 2 examples."""
    n = values.shape[1]
    if n < 2:
        return None
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_resamples, n), generator=gen)  # [R, N]
    means = values[:, idx].mean(-1)  # [3, R]
    span = means[0] - means[1]
    ok = span.abs() > 1e-12
    f = ((means[2] - means[1])[ok] / span[ok]).numpy()
    if len(f) == 0:
        return None
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(f, tail)), float(np.percentile(f, 100 - tail))]
