"""circuits: edge-level circuit discovery for `transformers` causal language models.

The pipeline, one module per step::

    model    -> circuits.models / circuits.runtime   (TracedModel: record, patch, probe)
    graph    -> circuits.graph                        (Graph: nodes, receivers, edges as tensors)
    scores   -> circuits.attribution / circuits.patching  (EAP, EAP-IG, ACDC, exact effects, path patching)
    circuit  -> circuits.prune                        (top-n, threshold, greedy, dangling removal)
    evaluation -> circuits.evaluate                   (faithfulness, CPR/CMD curves, ROC/AUC)
    render   -> circuits.render / circuits.export     (graphviz diagrams; JSON, GraphML, GEXF, CSV, dot)

``circuits.save(graph, path)`` writes any of these by suffix (diagrams through ``circuits.render``).

Quick start::

    import circuits
    model, tokenizer = circuits.zoo.load("induction-2l")
    task = circuits.load_task("induction", tokenizer, n=200, **circuits.zoo.task_options("induction-2l"))
    train, test = task.split(0.5, seed=0)
    graph = circuits.attribute(model, train, method="eap-ig-inputs")
    circuits.prune.topn(graph, 30)
    print(circuits.evaluate_circuit(model, graph, test).faithfulness)
    circuits.save(graph, "circuit.svg")     # or .png .pdf .html .json .graphml .gexf .csv .dot
"""

from . import prune, zoo
from .attribution import METHODS, attribute
from .evaluate import CircuitReport, Curve, evaluate_circuit, faithfulness_curve, node_roc, roc
from .export import load, save
from .graph import Graph
from .models import SUPPORTED_MODEL_TYPES, get_adapter, graph_for
from .patching import PatchRunner, acdc, exact_edge_effects, iterative_prune, path_patching, path_patching_grid
from .runtime import RunOutput, TracedModel
from .tasks import Batch, Task, load_task

__version__ = "0.1.0"

__all__ = [
    "Graph",
    "TracedModel",
    "RunOutput",
    "graph_for",
    "get_adapter",
    "SUPPORTED_MODEL_TYPES",
    "METHODS",
    "attribute",
    "PatchRunner",
    "exact_edge_effects",
    "acdc",
    "path_patching",
    "path_patching_grid",
    "iterative_prune",
    "prune",
    "CircuitReport",
    "Curve",
    "evaluate_circuit",
    "faithfulness_curve",
    "roc",
    "node_roc",
    "save",
    "load",
    "Task",
    "Batch",
    "load_task",
    "zoo",
    "__version__",
]
