"""OLMoE (``OlmoeForCausalLM``): a mixture-of-experts Llama relative whose q and k norms
(RMSNorm) span the *whole* projection width (all heads at once), followed by an optional
``clip_qkv`` clamp.

Because the norm mixes heads, a head's query depends on its receiver input through every
head's projection. The definition used here: each q/k/v receiver's own input is normalised,
projected through the full-width ``q_proj``/``k_proj``, passed through the full-width norm,
and then sliced to its head (to its key/value group for k and v). With shared inputs this is
exactly the model's computation; with per-receiver inputs each receiver pays one full-width
projection. q and k are therefore not linear in the receiver input (``linear_qkv = False``,
as for Qwen3). The whole sparse MLP block is one MLP node, as in :mod:`.moe`."""

from __future__ import annotations

import torch

from .llama import LlamaAdapter


class OlmoeAdapter(LlamaAdapter):
    family = "olmoe"
    model_types = ("olmoe",)
    linear_qkv = False

    def attn_window(self, layer: int) -> int | None:
        return None  # OLMoE builds a plain causal mask (no sliding window)

    def _full(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full-width q, k, v of normalised inputs ``x`` [..., d]: ``[..., H*dh]``, ``[..., Hkv*dh]`` twice."""
        a = self.block(layer).self_attn
        q, k, v = a.q_norm(a.q_proj(x)), a.k_norm(a.k_proj(x)), a.v_proj(x)
        clip = getattr(self.config, "clip_qkv", None)
        if clip is not None:
            q, k, v = (t.clamp(-clip, clip) for t in (q, k, v))
        return q, k, v

    def _heads_of(self, t: torch.Tensor, per_head: bool) -> torch.Tensor:
        """``t`` [B, P, G*dh] -> ``[B, G, P, dh]``; per query head (``t`` [H, B, P, G*dh]), row h's own
        head or group -> ``[B, H, P, dh]``."""
        dh = self.head_dim
        t = t.view(*t.shape[:-1], -1, dh)  # [..., P, G, dh]
        if not per_head:
            return t.transpose(1, 2)
        H, G = t.shape[0], t.shape[-2]
        h = torch.arange(H, device=t.device)
        return t[h, :, :, h // (H // G)].transpose(0, 1)  # [H, B, P, dh] -> [B, H, P, dh]

    def project_qkv(self, layer: int, xq: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor):
        out = []
        for slot, x in enumerate((xq, xk, xv)):
            full = self._full(layer, x)[slot]
            out.append(self._heads_of(full, per_head=x.dim() == 4))
        return tuple(out)

    def project_heads(self, layer: int, x: torch.Tensor, heads: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.view(*t.shape[:-1], -1, self.head_dim) for t in self._full(layer, x))  # [m, B, P, G, dh]
        m = torch.arange(len(heads), device=x.device)
        kv = heads // (self.n_heads // self.n_kv_heads)
        c = comp[:, None, None, None]
        return torch.where(c == 0, q[m, :, :, heads], torch.where(c == 1, k[m, :, :, kv], v[m, :, :, kv]))
