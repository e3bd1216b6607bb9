"""GPT-Neo (``GPTNeoForCausalLM``): learned positions, unscaled attention, local/global layers."""

from __future__ import annotations

from typing import Any

from .base import AttnWeights, linear_heads, linear_out_heads
from .gpt2 import GPT2Adapter


class GPTNeoAdapter(GPT2Adapter):
    """Same module layout and embedding as GPT-2; q/k/v/out are separate Linear layers."""

    family = "gpt_neo"
    model_types = ("gpt_neo",)
    upcast_attention = True  # GPT-Neo computes attention scores in float32
    additive_residual = True  # the sparse masked forward applies (see Adapter.additive_residual)

    @classmethod
    def graph_shape(cls, config: Any) -> dict[str, Any]:
        return {"n_layers": int(config.num_layers), "n_heads": int(config.num_heads), "parallel_attn_mlp": False}

    @classmethod
    def kv_heads(cls, config: Any) -> int:
        return int(config.num_heads)

    @classmethod
    def get_head_dim(cls, config: Any) -> int:
        return int(config.hidden_size // config.num_heads)

    def attn_scale(self, layer: int) -> float:
        return 1.0  # GPT-Neo does not scale attention scores

    def attn_window(self, layer: int) -> int | None:
        return int(self.config.window_size) if self.config.attention_layers[layer] == "local" else None

    def attn_weights(self, layer: int) -> AttnWeights:
        a = self.block(layer).attn.attention
        H = self.n_heads
        return AttnWeights(
            linear_heads(a.q_proj.weight, H),
            linear_heads(a.k_proj.weight, H),
            linear_heads(a.v_proj.weight, H),
            linear_out_heads(a.out_proj.weight, H),
            None,
            None,
            None,
            a.out_proj.bias,
        )
