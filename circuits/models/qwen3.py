"""Qwen3: the Llama family plus a per-head RMSNorm on queries and keys (``q_norm``, ``k_norm`` over
the head dimension, after the projection and before rotary). :class:`PerHeadQKNorm` is that norm for
any family whose attention module holds ``q_norm``/``k_norm`` (Gemma-3 uses it too)."""

from __future__ import annotations

import torch

from .base import NormFold
from .llama import LlamaAdapter


class PerHeadQKNorm:
    """Mixin (before an adapter base): queries and keys normalised per head after the projection.

    q and k are then not linear in the receiver input, so gradient probes read each q/k/v
    receiver's own input instead of the shared linear shortcut (``linear_qkv = False``).
    """

    linear_qkv = False

    def project_qkv(self, layer: int, xq: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor,
                    folds: tuple[NormFold, NormFold, NormFold] | None = None):
        q, k, v = super().project_qkv(layer, xq, xk, xv, folds)  # [B, H(kv), P, dh]
        attn = self.block(layer).self_attn
        return attn.q_norm(q), attn.k_norm(k), v

    def project_heads(self, layer: int, x: torch.Tensor, heads: torch.Tensor, comp: torch.Tensor,
                      fold: NormFold | None = None) -> torch.Tensor:
        y = super().project_heads(layer, x, heads, comp, fold)  # [m, B, P, dh]
        attn = self.block(layer).self_attn
        c = comp[:, None, None, None]
        return torch.where(c == 0, attn.q_norm(y), torch.where(c == 1, attn.k_norm(y), y))


class Qwen3Adapter(PerHeadQKNorm, LlamaAdapter):
    family = "qwen3"
    model_types = ("qwen3",)
    additive_residual = True  # the sparse masked forward applies (see Adapter.additive_residual)
