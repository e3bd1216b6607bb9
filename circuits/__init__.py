"""circuits: edge-level circuit discovery for `transformers` causal language models.

The pipeline, one package per step (docs/architecture.md)::

    model      -> circuits.models, circuits.runtime   (adapters; TracedModel: record, patch, probe)
    graph      -> circuits.graph                      (GraphLayout: all indexing; Graph: scores + circuit)
    scores     -> circuits.scores, circuits.patching  (EAP, EAP-IG; exact effects, ACDC, path patching)
    circuit    -> circuits.circuit                    (top-n, threshold, greedy, dangling removal)
    evaluation -> circuits.evaluation                 (faithfulness, CPR/CMD curves, ROC/AUC)
    render     -> circuits.render                     (graphviz diagrams, plots; JSON, GraphML, GEXF, CSV, dot)

:func:`circuits.discover` runs the whole pipeline; every step returns new values.

Quick start::

    import circuits
    model, tokenizer = circuits.zoo.load("induction-2l")
    task = circuits.load_task("induction", tokenizer, n=200, **circuits.zoo.task_options("induction-2l"))
    train, test = task.split(0.5, seed=0)
    scores = circuits.attribute(model, train, method="eap-ig-inputs")
    circuit = circuits.prune.topn(scores, 30)
    print(circuits.evaluate_circuit(model, circuit, test).faithfulness)
    circuits.save(circuit, "circuit.svg")     # or .png .pdf .html .json .graphml .gexf .csv .dot
"""

import importlib
import sys
from typing import Any

# Submodules load lazily (PEP 562): `import circuits` (and the CLI's `circuits models`/`circuits tasks`)
# stays cheap, and torch/transformers are imported only when a name that needs them is first used.
_EXPORTS: dict[str, str] = {
    "zoo": "",  # a subpackage: circuits.zoo
    "prune": "circuit",  # the module circuits.circuit.prune
    **dict.fromkeys(["CircuitReport", "Comparison", "Curve", "compare", "evaluate_circuit",
                     "faithfulness_curve", "node_roc", "roc"], "evaluation"),
    **dict.fromkeys(["Graph", "GraphLayout", "KeepMask", "Provenance", "Scoring", "Selection"], "graph"),
    **dict.fromkeys(["SUPPORTED_MODEL_TYPES", "get_adapter", "graph_for"], "models"),
    **dict.fromkeys(["PatchRunner", "acdc", "exact_edge_effects", "iterative_prune", "path_patching",
                     "path_patching_grid"], "patching"),
    **dict.fromkeys(["Discovery", "discover", "write_outputs"], "pipeline"),
    **dict.fromkeys(["load", "save"], "render"),
    **dict.fromkeys(["Patch", "Probe", "RunOutput", "TracedModel"], "runtime"),
    **dict.fromkeys(["METHODS", "attribute"], "scores"),
    **dict.fromkeys(["Batch", "Task", "load_task"], "tasks"),
}
"""Exported name -> the subpackage it comes from (``""``: the name is itself a subpackage)."""


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'circuits' has no attribute {name!r}")
    if where == "":
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        module = importlib.import_module(f"{__name__}.{where}")
        value = getattr(module, name) if hasattr(module, name) else importlib.import_module(f"{module.__name__}.{name}")
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def _notebook_html(obj: Any) -> str | None:
    """IPython's HTML for a Graph or CircuitReport (circuits.render.notebook, imported on first display)."""
    return importlib.import_module(f"{__name__}.render.notebook").to_html(obj)


def _register_notebook_display() -> None:
    """Inside IPython/Jupyter, show graphs (their diagram) and reports (a table) as HTML.

    Registered by class name, so nothing heavy is imported until an object is displayed.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    if shell is None:
        return
    html = shell.display_formatter.formatters["text/html"]
    html.for_type_by_name("circuits.graph.graph", "Graph", _notebook_html)
    html.for_type_by_name("circuits.evaluation.report", "CircuitReport", _notebook_html)


_register_notebook_display()

__version__ = "0.2.0"

__all__ = [
    "Batch",
    "CircuitReport",
    "Comparison",
    "Curve",
    "Discovery",
    "Graph",
    "GraphLayout",
    "KeepMask",
    "METHODS",
    "Patch",
    "PatchRunner",
    "Probe",
    "Provenance",
    "RunOutput",
    "SUPPORTED_MODEL_TYPES",
    "Scoring",
    "Selection",
    "Task",
    "TracedModel",
    "__version__",
    "acdc",
    "attribute",
    "compare",
    "discover",
    "evaluate_circuit",
    "exact_edge_effects",
    "faithfulness_curve",
    "get_adapter",
    "graph_for",
    "iterative_prune",
    "load",
    "load_task",
    "node_roc",
    "path_patching",
    "path_patching_grid",
    "prune",
    "roc",
    "save",
    "write_outputs",
    "zoo",
]
