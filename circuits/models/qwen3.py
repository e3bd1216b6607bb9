"""Qwen3: the Llama family plus a per-head RMSNorm on queries and keys (``q_norm``, ``k_norm`` over
the head dimension, after the projection and before rotary)."""

from __future__ import annotations

import torch

from .llama import LlamaAdapter


class Qwen3Adapter(LlamaAdapter):
    family = "qwen3"
    model_types = ("qwen3",)
    #: q and k are not linear in the receiver input (a norm follows the projection), so gradient
    #: probes read each q/k/v receiver's own input instead of the shared linear shortcut
    linear_qkv = False
    additive_residual = True  # the sparse masked forward applies (see Adapter.additive_residual)

    def project_qkv(self, layer: int, xq: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor):
        q, k, v = super().project_qkv(layer, xq, xk, xv)  # [B, H(kv), P, dh]
        attn = self.block(layer).self_attn
        return attn.q_norm(q), attn.k_norm(k), v

    def project_heads(self, layer: int, x: torch.Tensor, heads: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
        y = super().project_heads(layer, x, heads, comp)  # [m, B, P, dh]
        attn = self.block(layer).self_attn
        c = comp[:, None, None, None]
        return torch.where(c == 0, attn.q_norm(y), torch.where(c == 1, attn.k_norm(y), y))
