"""OLMo-2: post-norms only, and q/k RMSNorm over the full projection width.

A block is ``x + post_attention_layernorm(attn(x))`` then ``x + post_feedforward_layernorm(mlp(x))``:
no norm before the attention or the MLP, and the attention's summed output is normalised before it
joins the residual (head outputs are not additive; docs/concepts.md).

Queries and keys are ``q_norm(q_proj(x))`` and ``k_norm(k_proj(x))`` where the norms run over all
heads together (width ``H·dh`` and ``Hkv·dh``). A head's query therefore depends on the whole
projection of its input. When a q (or k) receiver reads its own input ``x_v``, the convention is:
project ``x_v`` for *every* head, normalise over the full width, then take that head's slice (for k,
its key/value group's slice). Receivers that share one input get exactly the model's queries; a
receiver with its own input costs a full-width projection instead of one head's.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import head_projection
from .llama import LlamaAdapter


class FullWidthQKNorm:
    """Mixin (before a Llama-like adapter base): ``q_norm``/``k_norm`` over the whole projection width
    (OLMo-2, OLMoE), then an optional ``config.clip_qkv`` clamp of q, k and v (OLMoE).

    A q (k) receiver with its own input pays one full-width ``q_proj`` (``k_proj``) and norm; a v
    receiver only its key/value group's slice of ``W_V``. Only the projection each receiver needs
    is computed (rows are grouped by q/k/v slot), so no row is projected three times.
    """

    linear_qkv = False
    folds_input_norm = False  # q/k are full-width projections, normalised over all heads
    #: the model clamps q, k and v to ``±config.clip_qkv`` after the norms (OLMoE; OLMo-2 does not)
    clips_qkv: bool = False

    def _clip(self, t: torch.Tensor) -> torch.Tensor:
        clip = getattr(self.config, "clip_qkv", None) if self.clips_qkv else None
        return t if clip is None else t.clamp(-clip, clip)

    def _full_width(self, layer: int, x: torch.Tensor, which: str) -> torch.Tensor:
        """``x`` [..., P, d] -> normalised (clipped) full-width queries or keys ``[..., P, n, dh]``."""
        attn = self.block(layer).self_attn
        proj, norm = (attn.q_proj, attn.q_norm) if which == "q" else (attn.k_proj, attn.k_norm)
        y = self._clip(norm(proj(x)))
        return y.view(*y.shape[:-1], y.shape[-1] // self.head_dim, self.head_dim)  # explicit: y may be empty

    def project_qkv(self, layer: int, xq: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor):
        """As :meth:`Adapter.project_qkv`; a per-head q/k input is projected for every head, normalised
        over the full width, and its own head's (key/value group's) slice kept."""
        w = self.attn_weights(layer)
        q, k = self._per_head_slice(layer, xq, "q"), self._per_head_slice(layer, xk, "k")
        return q, k, self._clip(head_projection(xv, w.W_V, w.b_V))

    def _per_head_slice(self, layer: int, x: torch.Tensor, which: str) -> torch.Tensor:
        """Queries or keys ``[B, H(kv), P, dh]`` of a shared ``[B, P, d]`` or per-query-head ``[H, B, P, d]`` input."""
        y = self._full_width(layer, x, which)  # [(H,) B, P, n, dh]
        if x.dim() == 3:
            return y.transpose(1, 2)
        H, n = x.shape[0], y.shape[-2]
        own = torch.arange(H, device=x.device) // (H // n)  # the head (kv group) each row reads
        return y[torch.arange(H, device=x.device), :, :, own].transpose(0, 1)  # [B, H, P, dh]

    def project_heads(self, layer: int, x: torch.Tensor, heads: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
        """Row ``m``: ``x[m]`` through head ``heads[m]``'s q (full-width norm), k (full-width norm) or v;
        each row pays only its own slot's projection."""
        out = x.new_empty(*x.shape[:-1], self.head_dim)  # [m, B, P, dh]
        kv = heads // (self.n_heads // self.n_kv_heads)
        for slot, which, own in ((0, "q", heads), (1, "k", kv)):
            rows = (comp == slot).nonzero().flatten()
            if len(rows):
                y = self._full_width(layer, x[rows], which)  # [m_slot, B, P, n, dh]
                out[rows] = y[torch.arange(len(rows), device=x.device), :, :, own[rows]]
        rows = (comp == 2).nonzero().flatten()
        if len(rows):
            out[rows] = self._clip(super().project_heads(layer, x[rows], heads[rows], comp[rows]))
        return out


class Olmo2Adapter(FullWidthQKNorm, LlamaAdapter):
    family = "olmo2"
    model_types = ("olmo2",)

    def attn_norm(self, layer: int) -> nn.Module:
        return nn.Identity()

    def mlp_norm(self, layer: int) -> nn.Module:
        return nn.Identity()

    def post_attn_norm(self, layer: int) -> nn.Module | None:
        return self.block(layer).post_attention_layernorm

    def post_mlp_norm(self, layer: int) -> nn.Module | None:
        return self.block(layer).post_feedforward_layernorm
