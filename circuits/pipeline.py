"""The whole discovery pipeline as one call: score -> select a circuit -> evaluate -> write files.

:func:`discover` is what ``circuits discover`` runs (the CLI only parses arguments and prints);
it returns a :class:`Discovery` (scores, circuit, report, curve) and, with ``out``, writes the
output set all or nothing: every file goes into a temporary sibling folder that is moved into
place at the end, so an error or Ctrl-C leaves no partial results.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .circuit import prune
from .evaluation import CircuitReport, Curve, evaluate_circuit, faithfulness_curve
from .graph import Graph
from .patching import acdc, exact_edge_effects
from .render import plot_curves, render
from .scores import METHODS, attribute
from .tasks import Task

DiscoveryMethod = Literal["eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "eap-ig-edges", "exact", "acdc"]
"""Scoring methods of :func:`discover`: the attribution methods (:data:`circuits.scores.METHODS`),
``exact`` (exact single-edge effects as scores) and ``acdc`` (ACDC; chooses its own circuit)."""

DISCOVERY_METHODS: tuple[str, ...] = METHODS + ("exact", "acdc")

OUTPUTS: tuple[str, ...] = ("scores.pt", "circuit.json", "circuit.svg", "circuit.png", "curve.png", "curve.svg", "report.json")
"""Files :func:`write_outputs` may write (the diagrams need Graphviz; the curve may be skipped)."""

MAX_DIAGRAM_EDGES = 500
"""Circuits larger than this are not drawn unless forced: the diagram would be unreadable."""


@dataclass
class Discovery:
    """What :func:`discover` found: ``scores`` (every edge scored, provenance of the method),
    ``circuit`` (the same scores, the selected circuit), its ``report`` and the faithfulness ``curve``."""

    scores: Graph
    circuit: Graph
    report: CircuitReport
    curve: Curve | None = None
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def score(
    model: nn.Module,
    train: Task,
    method: DiscoveryMethod = "eap-ig-inputs",
    *,
    metric: str | Callable | None = None,
    steps: int = 5,
    tau: float = 0.01,
    batch_size: int = 32,
    progress: bool = False,
) -> Graph:
    """Scores for every edge by ``method`` (for ``acdc`` the graph also holds ACDC's circuit)."""
    if method not in DISCOVERY_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(DISCOVERY_METHODS)}")
    if method == "acdc":
        return acdc(model, train, tau, metric=metric or "kl_div", batch_size=batch_size, progress=progress).graph
    if method == "exact":
        from .graph import Scoring
        from .models import graph_for

        t0 = time.perf_counter()
        eff = exact_edge_effects(model, train, metric, batch_size=batch_size, progress=progress)
        scoring = Scoring(method="exact", metric=metric if isinstance(metric, str) else train.metric,
                          n_examples=len(train), seconds=round(time.perf_counter() - t0, 4))
        return graph_for(model).with_scores(eff, scoring=scoring)
    return attribute(model, train, metric, method, steps=steps, batch_size=batch_size, progress=progress)


def select(scores: Graph, *, edges: int | None = None, threshold: float | None = None,
           rule: Literal["topn", "greedy"] = "topn", signed: bool = False) -> Graph:
    """The circuit from scores: ``threshold`` if given, else the top ``edges`` by ``rule``."""
    if threshold is not None:
        return prune.threshold(scores, threshold, absolute=not signed)
    if edges is None:
        raise ValueError("choose the circuit's size: pass edges= or threshold=")
    if rule == "greedy":
        return prune.greedy(scores, edges, absolute=not signed)
    return prune.topn(scores, edges, absolute=not signed)


def discover(
    model: nn.Module,
    train: Task,
    test: Task,
    method: DiscoveryMethod = "eap-ig-inputs",
    *,
    metric: str | Callable | None = None,
    edges: int | None = 50,
    threshold: float | None = None,
    rule: Literal["topn", "greedy"] = "topn",
    signed: bool = False,
    steps: int = 5,
    tau: float = 0.01,
    batch_size: int = 32,
    curve: bool = True,
    model_name: str = "",
    progress: bool = False,
) -> Discovery:
    """Score edges on ``train``, select a circuit, evaluate it (and its curve) on ``test``.

    ACDC selects its own circuit (``edges``/``threshold`` must then be None). Nothing is written;
    see :func:`write_outputs`.
    """
    timings: dict[str, float] = {}
    t0 = t = time.perf_counter()
    scores = score(model, train, method, metric=metric, steps=steps, tau=tau, batch_size=batch_size, progress=progress)
    timings["scoring"] = time.perf_counter() - t
    scores = scores.with_provenance(model=model_name or scores.provenance.model, task=train.name)
    circuit = scores if method == "acdc" else select(scores, edges=edges, threshold=threshold, rule=rule, signed=signed)
    t = time.perf_counter()
    report = evaluate_circuit(model, circuit, test, metric=metric, batch_size=batch_size)
    timings["evaluation"] = time.perf_counter() - t
    crv = None
    if curve:
        t = time.perf_counter()
        crv = faithfulness_curve(model, scores, test, absolute=not signed, metric=metric, batch_size=batch_size)
        timings["curve"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    circuit = circuit.with_provenance(faithfulness=report.faithfulness)
    report.method, report.model, report.task, report.curve = method, model_name or report.model, test.name, crv
    report.timings.update({f"{k}_s": round(v, 4) for k, v in timings.items()})
    report.settings.update({"n_train": len(train), "n_test": len(test), "method": method, "steps": steps,
                            "edges": edges, "threshold": threshold, "rule": rule, "signed": signed})
    return Discovery(scores, circuit, report, crv)


def write_outputs(found: Discovery, out: str | Path, *, overwrite: bool = False, force_render: bool = False,
                  title: str = "") -> Discovery:
    """Write the output set (:data:`OUTPUTS`) into ``out``, all or nothing.

    Files are written into a temporary sibling folder, then moved into ``out`` (existing files
    there are only replaced with ``overwrite``). Diagrams are skipped with a warning when
    Graphviz is missing or the circuit has more than :data:`MAX_DIAGRAM_EDGES` edges (unless
    ``force_render``); every other file is still written.
    """
    out = Path(out)
    existing = [n for n in OUTPUTS if (out / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds results ({', '.join(existing)}); pass --force to overwrite them")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        notes = _write_all(found, stage, force_render, title)
        out.mkdir(exist_ok=True)
        written = []
        for f in sorted(stage.iterdir()):
            os.replace(f, out / f.name)
            written.append(out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    found.files, found.warnings = written, notes
    return found


def _write_all(found: Discovery, folder: Path, force_render: bool, title: str) -> list[str]:
    notes: list[str] = []
    torch.save({"scores": found.scores.scores, "edges": found.scores.edge_names(), "method": found.scores.provenance.method},
               folder / "scores.pt")
    found.circuit.save_json(folder / "circuit.json")
    n = found.circuit.n_circuit_edges
    if n > MAX_DIAGRAM_EDGES and not force_render:
        notes.append(f"diagram skipped: the circuit has {n} edges (more than {MAX_DIAGRAM_EDGES}); "
                     "pass --force-render to draw it anyway")
    else:
        try:
            for fmt in ("svg", "png"):
                render(found.circuit, folder / f"circuit.{fmt}", force=True)
        except RuntimeError:  # no Graphviz `dot`
            for fmt in ("svg", "png"):
                (folder / f"circuit.{fmt}").unlink(missing_ok=True)
            notes.append("diagram skipped: Graphviz `dot` not found (apt-get install graphviz / brew install graphviz)")
    if found.curve is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for fmt in ("png", "svg"):
                plot_curves({found.report.method: found.curve}, folder / f"curve.{fmt}", title=title or None)
    found.report.to_json(folder / "report.json")
    return notes
