"""A MIB circuit-track submission folder: ``{out}/{task}_{model}/`` with importance scores or nine circuits.

MIB's submission instructions (circuit localization track code, README section "Submitting to the
MIB Leaderboard", as in github.com/yanivnik/MIB-shared-task; Mueller et al. 2025, "MIB: A Mechanistic
Interpretability Benchmark", arXiv:2504.13151, mib-bench.github.io) ask for one folder per task/model named ``{task}_{model}`` holding
either one file of floating-point importance scores for every edge, or nine files of binary
circuits with at most 0.1, 0.2, 0.5, 1, 2, 5, 10, 20 and 50 % of the model's edges. Files are
EAP-IG graph JSON (:mod:`circuits.render.mib`).

The circuits follow the rule MIB's own evaluation applies to importance scores
(``evaluate_area_under_curve``): the top ``int(p/100 * E)`` edges by ``|score|``, then edges
not on an input -> logits path are removed (EAP-IG's ``prune``), so every circuit has at most
``p/100 * E`` edges; each count is checked against its bound before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..circuit import top_fraction
from ..graph import Graph
from ..io import staged_folder
from .mib import save_mib

MIB_PERCENTS: tuple[float, ...] = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)
"""Edge budgets (percent of the model's edges) of MIB's nine binary circuits."""


@dataclass(frozen=True)
class MibModel:
    """A model of MIB's circuit track: its folder name, the model, and its EAP-IG graph shape."""

    name: str
    full_name: str
    n_layers: int
    n_heads: int
    d_model: int
    parallel_attn_mlp: bool = False

    @property
    def shape_text(self) -> str:
        return f"{self.n_layers} layers x {self.n_heads} heads"


MIB_MODELS: dict[str, MibModel] = {m.name: m for m in (
    MibModel("gpt2", "GPT-2 small", 12, 12, 768),
    MibModel("qwen2.5", "Qwen/Qwen2.5-0.5B", 24, 14, 896),
    MibModel("gemma2", "google/gemma-2-2b", 26, 8, 2304),
    MibModel("llama3", "meta-llama/Llama-3.1-8B", 32, 32, 4096),
    MibModel("interpbench", "InterpBench IOI model", 6, 4, 64),
)}
"""MIB's model names (as in its folder names) and the shapes of their EAP-IG graphs (query heads for GQA models)."""
MIB_TASKS: tuple[str, ...] = ("ioi", "mcqa", "arithmetic-addition", "arithmetic-subtraction", "arc-easy", "arc-challenge")
"""MIB's task names as they appear in folder names (``_`` in a task name becomes ``-``)."""
MIB_PAIRS: tuple[str, ...] = ("ioi_gpt2", "ioi_qwen2.5", "ioi_gemma2", "ioi_llama3", "ioi_interpbench", "mcqa_qwen2.5",
                              "mcqa_gemma2", "mcqa_llama3", "arithmetic-addition_llama3",
                              "arithmetic-subtraction_llama3", "arc-easy_gemma2", "arc-easy_llama3",
                              "arc-challenge_llama3")
"""The task/model folders MIB evaluates."""
SubmissionKind = Literal["importances", "circuits"]
IMPORTANCES_FILE = "importances.json"


def circuit_file(percent: float) -> str:
    """File name of the binary circuit with at most ``percent`` % of the edges: ``edges_0.1pct.json`` ... ``edges_50pct.json``."""
    return f"edges_{percent:g}pct.json"


def submission_files(kind: SubmissionKind) -> list[str]:
    """The files one task/model folder holds."""
    return [IMPORTANCES_FILE] if kind == "importances" else [circuit_file(p) for p in MIB_PERCENTS]


def folder_name(task: str, model: str) -> str:
    """``{task}_{model}`` after checking both names against MIB's (``_`` in a task name is read as ``-``)."""
    t = task.strip().lower().replace("_", "-")
    m = model.strip().lower()
    if t not in MIB_TASKS:
        raise ValueError(f"unknown MIB task {task!r}; MIB's tasks: {', '.join(MIB_TASKS)}")
    if m not in MIB_MODELS:
        raise ValueError(f"unknown MIB model {model!r}; MIB's models: {', '.join(MIB_MODELS)}")
    if f"{t}_{m}" not in MIB_PAIRS:
        raise ValueError(f"MIB does not evaluate task {t} on model {m}; its task/model pairs: {', '.join(MIB_PAIRS)}")
    return f"{t}_{m}"


def check_scores(graph: Graph, model: str, source: str = "the scores") -> None:
    """Raise ``ValueError`` unless ``graph`` has MIB model ``model``'s shape and a finite score on every edge."""
    spec = MIB_MODELS[model.strip().lower()]
    if graph.layout.shape != (spec.n_layers, spec.n_heads, spec.parallel_attn_mlp):
        par = ", parallel attention/MLP" if graph.parallel_attn_mlp else ""
        raise ValueError(f"{source} are for a model of {graph.n_layers} layers x {graph.n_heads} heads{par}, but MIB's "
                         f"{spec.name} ({spec.full_name}) has {spec.shape_text}; score {spec.name} itself")
    bad = int((~torch.isfinite(graph.scores)).sum())
    if bad:
        raise ValueError(f"{source} have {bad} edge(s) without a finite score: MIB needs a score on every edge to rank "
                         "them (a circuit file without scores cannot be sized)")


def mib_circuits(graph: Graph) -> dict[float, Graph]:
    """The nine circuits: for each budget ``p``, top ``int(p/100 * E)`` by ``|score|``, dangling edges removed.

    A circuit can be empty (when none of its top edges lies on an input -> logits path; MIB counts 0
    edges as within every bound). Raises ``ValueError`` if a circuit exceeds its bound.
    """
    out = {}
    E = graph.n_edges
    for p in MIB_PERCENTS:
        circuit = top_fraction(graph, p / 100)
        n = circuit.n_circuit_edges
        if n > p / 100 * E:  # cannot happen with top_fraction's rounding down; checked because MIB rejects it
            raise ValueError(f"the {p:g} % circuit has {n} edges, over its bound of {p / 100 * E:.2f} of the {E} edges")
        out[p] = circuit
    return out


def write_submission(graph: Graph, out: str | Path, task: str, model: str, kind: SubmissionKind = "importances",
                     overwrite: bool = False) -> dict[Path, int]:
    """Write ``{out}/{task}_{model}/`` (all or nothing); returns each file written with its in-graph edge count.

    ``kind="importances"``: one ``importances.json`` with every edge's score (every edge ``in_graph``);
    ``kind="circuits"``: the nine :func:`mib_circuits`. An existing folder with files in it is only
    replaced with ``overwrite`` (then the MIB files of the other kind are removed, so that the folder
    holds one kind).
    """
    name = folder_name(task, model)
    check_scores(graph, model)
    spec = MIB_MODELS[model.strip().lower()]
    target = Path(out) / name
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise FileExistsError(f"{target} already exists and is not empty; pass --force to replace its MIB files")
    if kind == "importances":
        graphs = {IMPORTANCES_FILE: graph.with_circuit(torch.ones(graph.n_edges, dtype=torch.bool))}
    else:
        graphs = {circuit_file(p): c for p, c in mib_circuits(graph).items()}
    with staged_folder(target) as stage:
        for fname, g in graphs.items():
            save_mib(g, stage / fname, d_model=spec.d_model)
        for stale in set(submission_files("importances") + submission_files("circuits")) - set(graphs):
            (target / stale).unlink(missing_ok=True)  # the other kind's files, once every new one is written
    return {target / f: g.n_circuit_edges for f, g in graphs.items()}


__all__ = ["IMPORTANCES_FILE", "MIB_MODELS", "MIB_PAIRS", "MIB_PERCENTS", "MIB_TASKS", "MibModel", "SubmissionKind",
           "check_scores", "circuit_file", "folder_name", "mib_circuits", "submission_files", "write_submission"]
