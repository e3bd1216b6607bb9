"""Model adapters, chosen from ``config.model_type``."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..graph import Graph, Provenance
from .base import Adapter
from .gemma import Gemma2Adapter, Gemma3Adapter
from .gpt2 import GPT2Adapter
from .gpt_neo import GPTNeoAdapter
from .gpt_neox import GPTNeoXAdapter
from .gptj import GPTJAdapter
from .llama import LlamaAdapter
from .moe import MoEAdapter
from .olmo2 import Olmo2Adapter
from .olmoe import OlmoeAdapter
from .phi3 import Phi3Adapter
from .qwen3 import Qwen3Adapter

ADAPTERS: tuple[type[Adapter], ...] = (GPT2Adapter, GPTNeoAdapter, GPTNeoXAdapter, GPTJAdapter, LlamaAdapter,
                                       Qwen3Adapter, Phi3Adapter, MoEAdapter, OlmoeAdapter, Gemma2Adapter,
                                       Gemma3Adapter, Olmo2Adapter)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_class(config: Any) -> type[Adapter]:
    """The adapter class for a config; NotImplementedError naming the supported families otherwise."""
    model_type = getattr(config, "model_type", None)
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls
    raise NotImplementedError(
        f"model_type {model_type!r} is not supported. Supported: {', '.join(SUPPORTED_MODEL_TYPES)} "
        "(GPT-2, GPT-Neo, GPT-NeoX/Pythia, GPT-J, Llama, Mistral, Qwen2, Qwen3, Phi-3, Mixtral, Qwen2-MoE, OLMoE, "
        "Gemma-2, Gemma-3 text, OLMo-2)."
    )


def get_adapter(model: nn.Module) -> Adapter:
    """Wrap a `transformers` causal LM in its family's adapter."""
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"expected a transformers PreTrainedModel with a .config, got {type(model).__name__}")
    if model.get_output_embeddings() is None:
        raise TypeError(f"{type(model).__name__} has no LM head; load it with AutoModelForCausalLM")
    return adapter_class(config)(model)


def graph_for(model_or_config: Any) -> Graph:
    """The edge-level graph of a model or config (no weights needed; works on the meta device)."""
    config = getattr(model_or_config, "config", model_or_config)
    cls = adapter_class(config)
    cls.check_config(config)
    shape = cls.graph_shape(config)
    name = str(getattr(config, "_name_or_path", "") or "")
    return Graph.build(shape["n_layers"], shape["n_heads"], shape["parallel_attn_mlp"],
                       Provenance(model=name, model_type=str(config.model_type)))


__all__ = ["Adapter", "ADAPTERS", "SUPPORTED_MODEL_TYPES", "adapter_class", "get_adapter", "graph_for"]
