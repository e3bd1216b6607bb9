"""Phi-3 (``Phi3ForCausalLM``): the Llama family with fused ``qkv_proj`` and ``gate_up_proj``,
partial rotary (``partial_rotary_factor``) and an optional sliding window."""

from __future__ import annotations

from typing import Any

from .base import AttnWeights, linear_heads, linear_out_heads
from .llama import LlamaAdapter


class Phi3Adapter(LlamaAdapter):
    family = "phi3"
    model_types = ("phi3",)

    @classmethod
    def check_config(cls, config: Any) -> None:
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        if isinstance(rope, dict) and rope.get("rope_type") == "longrope":
            return  # Phi-3 128k: the model's own rotary module computes it, as for the other types
        super().check_config(config)

    def attn_weights(self, layer: int) -> AttnWeights:
        a = self.block(layer).self_attn
        H, Hkv, dh = self.n_heads, self.n_kv_heads, self.head_dim
        W = a.qkv_proj.weight  # [H*dh + 2*Hkv*dh, d]: rows q | k | v, each head-major
        q, k = H * dh, Hkv * dh
        return AttnWeights(
            linear_heads(W[:q], H),
            linear_heads(W[q:q + k], Hkv),
            linear_heads(W[q + k:], Hkv),
            linear_out_heads(a.o_proj.weight, H),
            None,
            None,
            None,
            a.o_proj.bias,
        )
