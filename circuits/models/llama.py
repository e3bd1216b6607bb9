"""Llama family (Llama, Mistral, Qwen2): RMSNorm, rotary, grouped-query attention, SwiGLU MLP."""

from __future__ import annotations

from typing import Any

import torch

from .base import Adapter, AttnWeights, bias_heads, linear_heads, linear_out_heads


class LlamaAdapter(Adapter):
    family = "llama"
    model_types = ("llama", "mistral", "qwen2")
    blocks_path = "model.layers"
    final_norm_path = "model.norm"
    additive_residual = True  # the sparse masked forward applies (see Adapter.additive_residual)
    rms_norm = True

    @classmethod
    def check_config(cls, config: Any) -> None:
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        if isinstance(rope, dict) and rope.get("rope_type", "default") not in ("default", "linear", "llama3", "dynamic", "yarn"):
            raise NotImplementedError(f"rope type {rope.get('rope_type')!r} is not supported")
        if getattr(config, "pretraining_tp", 1) not in (1, None):
            raise NotImplementedError("pretraining_tp > 1 is not supported; set config.pretraining_tp = 1 (same math)")

    def embed(self, ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.model.model.embed_tokens(ids)

    def rotary(self, x: torch.Tensor, position_ids: torch.Tensor):
        return self.model.model.rotary_emb(x, position_ids)

    def attn_scale(self, layer: int) -> float:
        return float(self.block(layer).self_attn.scaling)

    def attn_window(self, layer: int) -> int | None:
        cfg = self.config
        window = getattr(cfg, "sliding_window", None)
        if window is None:
            return None
        layer_types = getattr(cfg, "layer_types", None)
        if layer_types is not None and cfg.model_type != "mistral":
            return int(window) if layer_types[layer] == "sliding_attention" else None
        return int(window)

    def attn_weights(self, layer: int) -> AttnWeights:
        a = self.block(layer).self_attn
        H, Hkv = self.n_heads, self.n_kv_heads
        return AttnWeights(
            linear_heads(a.q_proj.weight, H),
            linear_heads(a.k_proj.weight, Hkv),
            linear_heads(a.v_proj.weight, Hkv),
            linear_out_heads(a.o_proj.weight, H),
            bias_heads(a.q_proj.bias, H),
            bias_heads(a.k_proj.bias, Hkv),
            bias_heads(a.v_proj.bias, Hkv),
            a.o_proj.bias,
        )
