"""The whole discovery pipeline as one call: score -> select a circuit -> evaluate -> write files.

:func:`discover` is what ``circuits discover`` runs (the CLI only parses arguments and prints);
it returns a :class:`Discovery` (scores, circuit, report, curve) and, with ``out``, writes the
output set all or nothing: every file goes into a temporary sibling folder that is moved into
place at the end, so an error or Ctrl-C leaves no partial results.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .circuit import prune
from .circuit.minimal import INERT_DELTA, check_runner, check_target, search_size
from .circuit.minimal import refine as refine_circuit
from .evaluation import CircuitReport, Curve, evaluate_circuit, faithfulness_curve
from .graph import Graph, Scoring
from .io import staged_folder
from .models import graph_for
from .parallel import Parallel, world
from .patching import PatchRunner, acdc, exact_edge_effects
from .render import plot_curves, render, render_explorer
from .render.explorer import MAX_EXPLORER_EDGES
from .scores import METHODS, attribute, edge_pruning
from .scores.attribution import IG_METHODS
from .tasks import Task

DiscoveryMethod = Literal["eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "eap-ig-edges", "exact",
                          "edge-pruning", "acdc"]
"""Scoring methods of :func:`discover`: the attribution methods (:data:`circuits.scores.METHODS`),
``exact`` (exact single-edge effects as scores), ``edge-pruning`` (learned edge masks; scores are
the gate logits) and ``acdc`` (ACDC; chooses its own circuit)."""

DISCOVERY_METHODS: tuple[str, ...] = METHODS + ("exact", "edge-pruning", "acdc")

EDGE_PRUNING_SHARE = 0.05
"""Edge pruning's target size when only a faithfulness target is given: this share of the edges
(the learned ranking is then cut at the smallest size meeting the target)."""

OUTPUTS: tuple[str, ...] = ("scores.pt", "circuit.json", "circuit.svg", "circuit.png", "circuit.html", "curve.png", "curve.svg",
                            "report.json")
"""Files :func:`write_outputs` may write (the diagrams need Graphviz; the curve may be skipped).
``circuit.html`` is the interactive explorer (:func:`circuits.render.render_explorer`): it needs
no Graphviz and its slider reads the curve when there is one."""

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
    steps: int | None = None,
    tau: float = 0.01,
    target_edges: int | None = None,
    batch_size: int = 32,
    progress: bool = False,
    seed: int = 0,
    runner: PatchRunner | None = None,
    parallel: Parallel = "data",
    max_rows: int | None = None,
    sparse: bool = True,
) -> Graph:
    """Scores for every edge by ``method`` (for ``acdc`` the graph also holds ACDC's circuit).

    ``steps``: IG steps (``eap-ig-*``, default 5) or optimisation steps (``edge-pruning``, default
    200); ``target_edges``: edge pruning's size (default 5 % of the edges); ``runner``: the training
    split's prepared runs, reused by ``exact`` when given; ``parallel``: how a process group shares
    exact effects (:data:`~circuits.parallel.Parallel`; attribution, ACDC and edge pruning split the data);
    ``max_rows``: mask x example rows per masked forward (exact, acdc; None: the most that fit the
    free memory, :func:`circuits.planning.runner_plan`; :mod:`circuits.planning` chooses it for a budget);
    ``sparse``: whether masked forwards may take the sparse path (:class:`~circuits.patching.PatchRunner`).
    """
    if method not in DISCOVERY_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(DISCOVERY_METHODS)}")
    if method == "edge-pruning":
        E = graph_for(model).n_edges
        target = target_edges if target_edges is not None else max(1, math.ceil(EDGE_PRUNING_SHARE * E))
        return edge_pruning(model, train, metric, target_edges=min(int(target), E), steps=steps or 200,
                            batch_size=batch_size, progress=progress, seed=seed)
    if method == "acdc":
        return acdc(model, train, tau, metric=metric or "kl_div", batch_size=batch_size, max_rows=max_rows, sparse=sparse,
                    progress=progress).graph
    if method == "exact":
        t0 = time.perf_counter()
        r = runner or PatchRunner(model, train, metric, batch_size=batch_size, parallel=parallel, max_rows=max_rows,
                                      sparse=sparse)
        eff = exact_edge_effects(None, None, progress=progress, runner=r)
        scoring = Scoring(method="exact", metric=r.metric_name, n_examples=r.n_examples,
                          seconds=round(time.perf_counter() - t0, 4))
        return graph_for(model).with_scores(eff, scoring=scoring)
    return attribute(model, train, metric, method, steps=steps or 5, batch_size=batch_size, progress=progress)


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
    faithfulness: float | None = None,
    refine: bool = False,
    rule: Literal["topn", "greedy"] = "topn",
    signed: bool = False,
    steps: int | None = None,
    tau: float = 0.01,
    batch_size: int = 32,
    curve: bool = True,
    model_name: str = "",
    progress: bool = False,
    seed: int = 0,
    parallel: Parallel = "data",
    max_rows: int | None = None,
    sparse: bool = True,
) -> Discovery:
    """Score edges on ``train``, select a circuit, evaluate it (and its curve) on ``test``.

    Exactly one of ``edges``, ``threshold`` and ``faithfulness`` picks the size (ACDC picks its
    own: all three None). With ``faithfulness`` the circuit is the smallest top-k circuit whose
    normalized faithfulness on ``train`` reaches the target (:func:`~circuits.circuit.minimal.search_size`);
    ``refine`` then makes it 1-minimal by exact patching (:func:`~circuits.circuit.minimal.refine`).
    The report records the search, the refinement and the held-out faithfulness with its bootstrap
    interval. ``max_rows`` bounds mask x example rows per masked forward (None: each runner takes the
    most that fit the free memory; :func:`circuits.planning.choose_for_discover` picks one for a budget) and
    ``sparse`` (the sparse masked forward where it applies) go to every :class:`~circuits.patching.PatchRunner`. Nothing is written;
    see :func:`write_outputs`.

    In a ``torch.distributed`` process group every rank calls this with the same arguments and gets
    the same result; ``parallel`` says whether exact effects, the size search, refinement, evaluation
    and the curve split the examples (``data``) or the masks (``masks``) across ranks.
    """
    _check_size_choice(method, edges, threshold, faithfulness, refine)
    runner = None
    if faithfulness is not None:  # refuse an unreachable or undefined target before the expensive scoring
        check_target(faithfulness)
        runner = PatchRunner(model, train, metric, batch_size=batch_size, parallel=parallel, max_rows=max_rows,
                                      sparse=sparse)
        check_runner(runner)
    if method == "edge-pruning":
        signed = True  # gate logits: larger = more open; |log α| would put strongly pruned edges first
    timings: dict[str, float] = {}
    t0 = t = time.perf_counter()
    scores = score(model, train, method, metric=metric, steps=steps, tau=tau, batch_size=batch_size,
                   progress=progress, target_edges=edges, seed=seed, runner=runner, parallel=parallel,
                   max_rows=max_rows, sparse=sparse)
    timings["scoring"] = time.perf_counter() - t
    scores = scores.with_provenance(model=model_name or scores.provenance.model, task=train.name)
    t = time.perf_counter()
    search: dict | None = None
    if runner is not None:
        circuit, search = _minimal(runner, scores, faithfulness, refine, signed)
    elif method == "acdc":
        circuit = scores
    else:
        circuit = select(scores, edges=edges, threshold=threshold, rule=rule, signed=signed)
    timings["selection"] = time.perf_counter() - t
    t = time.perf_counter()
    held_out = PatchRunner(model, test, metric, batch_size=batch_size, parallel=parallel, max_rows=max_rows,
                           sparse=sparse)  # prepared once
    report = evaluate_circuit(model, circuit, test, batch_size=batch_size, runner=held_out, progress=progress)
    timings["evaluation"] = time.perf_counter() - t
    crv = None
    if curve:
        t = time.perf_counter()
        crv = faithfulness_curve(model, scores, test, absolute=not signed, runner=held_out, progress=progress)
        timings["curve"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    circuit = circuit.with_provenance(faithfulness=report.faithfulness)
    report.method, report.model, report.task, report.curve = method, model_name or report.model, test.name, crv
    report.search = search
    report.timings.update({f"{k}_s": round(v, 4) for k, v in timings.items()})
    report.settings.update({"n_train": len(train), "n_test": len(test), "method": method,
                            "steps": steps if method in (*IG_METHODS, "edge-pruning") else None,
                            "edges": edges, "threshold": threshold, "faithfulness_target": faithfulness,
                            "refine": refine, "rule": rule, "signed": signed, "processes": world()[1],
                            "parallel": parallel if world()[1] > 1 else None})
    return Discovery(scores, circuit, report, crv)


def _check_size_choice(method: str, edges: int | None, threshold: float | None, faithfulness: float | None,
                       refine: bool) -> None:
    chosen = [n for n, v in (("edges", edges), ("threshold", threshold), ("faithfulness", faithfulness)) if v is not None]
    if method == "acdc":
        if chosen or refine:
            raise ValueError(f"ACDC picks its own circuit (its size follows tau); drop {', '.join(chosen) or 'refine'}")
        return
    if method == "edge-pruning" and len(chosen) == 2 and set(chosen) == {"edges", "faithfulness"}:
        return  # edge pruning's target size, then the smallest faithful cut of its ranking
    if len(chosen) != 1:
        raise ValueError("exactly one of edges, threshold and faithfulness picks the circuit's size; "
                         f"got {', '.join(chosen) or 'none'}")
    if refine and faithfulness is None:
        raise ValueError("refine needs a faithfulness target (refinement keeps f >= target while removing edges)")


def _minimal(runner: PatchRunner, scores: Graph, target: float, refine: bool, signed: bool) -> tuple[Graph, dict]:
    """The smallest faithful top-k circuit on the runner's (training) data, its 1-minimal refinement; the record."""
    found = search_size(runner, scores, target, absolute=not signed)
    circuit = found.circuit
    record: dict = {"target": target, "split": "train", "n_train": runner.n_examples,
                    "target_met": found.target_met, "train_faithfulness": found.faithfulness, "k": found.k,
                    "probes": [list(p) for p in found.probes], "refined": False}
    if refine:
        ref = refine_circuit(runner, circuit, target)
        circuit = ref.circuit
        record.update({"refined": True, "target_met": ref.target_met, "train_faithfulness": ref.faithfulness,
                       "is_1_minimal": ref.is_1_minimal, "rounds": ref.rounds, "n_inert": ref.n_inert,
                       "inert_delta": INERT_DELTA, "edges_before_refinement": found.circuit.n_circuit_edges,
                       "removal_faithfulness": ref.per_edge_removal_f})
    return circuit, record


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
    with staged_folder(out) as stage:
        notes = _write_all(found, stage, force_render, title)
        written = [out / f.name for f in sorted(stage.iterdir())]
    found.files, found.warnings = written, notes
    return found


def _write_all(found: Discovery, folder: Path, force_render: bool, title: str) -> list[str]:
    notes: list[str] = []
    torch.save({"scores": found.scores.scores, "edges": found.scores.edge_names(), "method": found.scores.provenance.method},
               folder / "scores.pt")
    found.circuit.save_json(folder / "circuit.json")
    n = found.circuit.n_circuit_edges
    if n > MAX_EXPLORER_EDGES and not force_render:
        notes.append(f"explorer skipped: the circuit has {n} edges (more than {MAX_EXPLORER_EDGES}); "
                     "pass --force-render to write circuit.html anyway")
    else:
        render_explorer(found.circuit, folder / "circuit.html", curve=found.curve, force=True)
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
