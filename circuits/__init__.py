"""circuits: edge-level circuit discovery for `transformers` causal language models."""

from .graph import Graph
from .models import SUPPORTED_MODEL_TYPES, get_adapter, graph_for
from .runtime import RunOutput, TracedModel

__version__ = "0.1.0"

__all__ = ["Graph", "TracedModel", "RunOutput", "graph_for", "get_adapter", "SUPPORTED_MODEL_TYPES", "__version__"]
