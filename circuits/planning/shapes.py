"""A model's sizes from its config alone: what the memory estimates read (no weights are loaded).

:class:`ModelShape` holds the sizes that decide memory (layers, heads, widths, vocabulary, parameter
count, bytes per element) and the edge graph's sender, receiver and edge counts, computed with
the same rules as :class:`~circuits.graph.GraphLayout` (a test checks they agree).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

DtypeName = Literal["float32", "bfloat16", "float16"]
"""Model precisions the planner knows (the CLI's ``--dtype``)."""

DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
"""Bytes per element of each precision."""

GATED_FAMILIES: tuple[str, ...] = ("llama", "qwen3")
"""Adapter families whose MLP is gated (SwiGLU: gate, up and down projections)."""

ROTARY_FAMILIES: tuple[str, ...] = ("llama", "qwen3", "gpt_neox")
"""Adapter families with rotary position embeddings."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a causal LM that decide its memory; ``dtype`` is the precision it runs in."""

    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    head_dim: int
    d_ff: int
    vocab: int
    n_params: int
    parallel_attn_mlp: bool = False
    dtype: str = "float32"
    sparse: bool = True
    """Whether the family declares ``additive_residual`` (the sparse masked forward applies to it)."""

    @property
    def bytes(self) -> int:
        """Bytes per element of the model's activations and parameters."""
        return DTYPE_BYTES[self.dtype]

    @property
    def gated_mlp(self) -> bool:
        return self.family in GATED_FAMILIES

    @property
    def rotary(self) -> bool:
        return self.family in ROTARY_FAMILIES

    @property
    def n_senders(self) -> int:
        """``input``, every head, every MLP: ``1 + L (H + 1)``."""
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_receivers(self) -> int:
        """Every head's q, k, v, every MLP, the logits: ``L (3H + 1) + 1``."""
        return self.n_layers * (3 * self.n_heads + 1) + 1

    @property
    def n_edges(self) -> int:
        """Sender-receiver pairs where the receiver reads the residual after the sender wrote it."""
        L, H = self.n_layers, self.n_heads
        total = 0
        for layer in range(L):
            before = 1 + layer * (H + 1)  # senders written before this layer's attention reads
            total += 3 * H * before + before + (0 if self.parallel_attn_mlp else H)
        return total + self.n_senders  # the logits read every sender

    def with_dtype(self, dtype: str) -> ModelShape:
        """The same model in another precision."""
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPE_BYTES)}")
        return ModelShape(**{**self.__dict__, "dtype": dtype})


def shape_of(config: Any, dtype: str = "float32", n_params: int | None = None) -> ModelShape:
    """The :class:`ModelShape` of a `transformers` config (its family must be supported).

    ``n_params`` defaults to the parameter count of the model built on the meta device (no memory).
    """
    from ..models import adapter_class

    cls = adapter_class(config)
    cls.check_config(config)
    g = cls.graph_shape(config)
    d = int(config.hidden_size)
    d_ff = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d
    shape = ModelShape(
        family=cls.family, n_layers=g["n_layers"], n_heads=g["n_heads"], n_kv_heads=cls.kv_heads(config),
        d_model=d, head_dim=cls.get_head_dim(config), d_ff=int(d_ff), vocab=int(config.vocab_size),
        n_params=0, parallel_attn_mlp=g["parallel_attn_mlp"],
        sparse=bool(cls.__dict__.get("additive_residual", False)),  # as runtime.node_states.supports_sparse reads it
    ).with_dtype(dtype)
    count = n_params if n_params is not None else meta_parameter_count(config)
    return ModelShape(**{**shape.__dict__, "n_params": int(count)})


def meta_parameter_count(config: Any) -> int:
    """Parameters of the model a config describes, built on the meta device (tied weights counted once)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def load_config(spec: str | Path) -> Any:
    """A `transformers` config from a zoo name, a model folder, a ``config.json`` path or a cached hub name.

    Raises ValueError naming the accepted forms when none of them matches.
    """
    from transformers import AutoConfig

    from .. import zoo

    text = str(spec)
    path = Path(text).expanduser()
    if text.lower() in zoo.MODELS:
        path = zoo.model_path(text)
    if path.is_file():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not a JSON config ({err})") from None
        if not isinstance(raw, dict) or not raw.get("model_type"):
            raise ValueError(f"{path} has no model_type; give a transformers config.json")
        raw = dict(raw)
        return AutoConfig.for_model(raw.pop("model_type"), **raw)
    try:
        return AutoConfig.from_pretrained(str(path) if path.is_dir() else text, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read a config for {text!r}: give a zoo name, a model folder, a config.json "
                         f"path or the name of a model in the local Hugging Face cache ({str(err).splitlines()[0]})"
                         ) from None
