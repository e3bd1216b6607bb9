"""GPT-2 (``GPT2LMHeadModel``): learned positions, LayerNorm, Conv1D fused q/k/v, GELU MLP."""

from __future__ import annotations

from typing import Any

import torch

from .base import Adapter, AttnWeights, bias_heads


class GPT2Adapter(Adapter):
    family = "gpt2"
    model_types = ("gpt2",)
    blocks_path = "transformer.h"
    final_norm_path = "transformer.ln_f"
    attn_norm_name, mlp_norm_name = "ln_1", "ln_2"
    additive_residual = True  # the sparse masked forward applies (see Adapter.additive_residual)

    @classmethod
    def graph_shape(cls, config: Any) -> dict[str, Any]:
        return {"n_layers": int(config.n_layer), "n_heads": int(config.n_head), "parallel_attn_mlp": False}

    @classmethod
    def check_config(cls, config: Any) -> None:
        if getattr(config, "add_cross_attention", False):
            raise NotImplementedError("GPT-2 with cross-attention is not a causal LM graph; load it without add_cross_attention")
        if getattr(config, "reorder_and_upcast_attn", False):
            raise NotImplementedError("GPT-2 with reorder_and_upcast_attn=True is not supported; set it to False (same result in float32)")

    def embed(self, ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        t = self.model.transformer
        return t.wte(ids) + t.wpe(position_ids)

    def attn_scale(self, layer: int) -> float:
        scale = self.head_dim**-0.5 if self.config.scale_attn_weights else 1.0
        if self.config.scale_attn_by_inverse_layer_idx:
            scale /= float(layer + 1)
        return scale

    def attn_weights(self, layer: int) -> AttnWeights:
        attn = self.block(layer).attn
        H, dh, d = self.n_heads, self.head_dim, self.d_model
        W = attn.c_attn.weight  # Conv1D: [d, 3d], columns q | k | v, each head-major
        b = attn.c_attn.bias
        Wq, Wk, Wv = (W[:, i * d : (i + 1) * d].view(d, H, dh).permute(1, 0, 2) for i in range(3))
        bq, bk, bv = (bias_heads(b[i * d : (i + 1) * d], H) for i in range(3))
        W_O = attn.c_proj.weight.view(H, dh, d)  # Conv1D: [d_in = H*dh, d]
        return AttnWeights(Wq, Wk, Wv, W_O, bq, bk, bv, attn.c_proj.bias)
