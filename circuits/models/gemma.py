"""Gemma-2 and Gemma-3 (text): the Llama layout with post-norms and soft-capping.

* the embedding is scaled by √d inside ``embed_tokens`` (in the model dtype, as `transformers` does);
* every RMSNorm multiplies by ``1 + weight`` (the modules do it; they are used as they are);
* a block is ``x + post_attention_layernorm(attn(input_layernorm(x)))`` then
  ``x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))``: the attention's summed
  output is normalised before it joins the residual, so head outputs are not additive
  (:meth:`Adapter.post_attn_norm`; the edge semantics are in docs/concepts.md);
* the attention scale is ``query_pre_attn_scalar ** -0.5``; layers alternate sliding-window and
  global attention (``config.layer_types``);
* Gemma-2 soft-caps attention logits and final logits (``c tanh(x / c)``);
* Gemma-3 adds a per-head RMSNorm on queries and keys (as Qwen3) and uses a different rotary
  base for local and global layers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .llama import LlamaAdapter
from .qwen3 import PerHeadQKNorm


class Gemma2Adapter(LlamaAdapter):
    family = "gemma2"
    model_types = ("gemma2",)
    mlp_norm_name = "pre_feedforward_layernorm"
    rms_weight_offset = 1.0  # Gemma's RMSNorm multiplies by 1 + weight

    @classmethod
    def check_config(cls, config: Any) -> None:
        super().check_config(config)
        if getattr(config, "use_bidirectional_attention", False):
            raise NotImplementedError("bidirectional attention is not supported (a causal LM is expected)")

    def post_attn_norm(self, layer: int) -> nn.Module | None:
        return self.block(layer).post_attention_layernorm

    def post_mlp_norm(self, layer: int) -> nn.Module | None:
        return self.block(layer).post_feedforward_layernorm

    def attn_softcap(self, layer: int) -> float | None:
        cap = getattr(self.config, "attn_logit_softcapping", None)
        return None if cap is None else float(cap)

    def final_softcap(self) -> float | None:
        cap = getattr(self.config, "final_logit_softcapping", None)
        return None if cap is None else float(cap)

    def attn_window(self, layer: int) -> int | None:
        window = getattr(self.config, "sliding_window", None)
        if window is None or self.config.layer_types[layer] != "sliding_attention":
            return None
        return int(window)


class Gemma3Adapter(PerHeadQKNorm, Gemma2Adapter):
    family = "gemma3"
    model_types = ("gemma3_text",)

    def rotary(self, x: torch.Tensor, position_ids: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """One ``(cos, sin)`` per layer type (local layers use ``rope_local_base_freq``'s base)."""
        emb = self.model.model.rotary_emb
        return {t: emb(x, position_ids, t) for t in sorted(set(self.config.layer_types))}

    def layer_rotary(self, rot: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return rot[self.config.layer_types[layer]]
