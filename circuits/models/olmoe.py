"""OLMoE (``OlmoeForCausalLM``): a mixture-of-experts Llama relative whose q and k norms
(RMSNorm) span the *whole* projection width (all heads at once), followed by an optional
``clip_qkv`` clamp.

Because the norm mixes heads, a head's query depends on its receiver input through every
head's projection. The definition used here: each q/k/v receiver's own input is normalised,
projected through the full-width ``q_proj``/``k_proj``, passed through the full-width norm,
and then sliced to its head (to its key/value group for k and v). With shared inputs this is
exactly the model's computation; with per-receiver inputs each receiver pays one full-width
projection (a v receiver only its group's slice of ``W_V``; :class:`~circuits.models.olmo2.FullWidthQKNorm`,
shared with OLMo-2). q and k are therefore not linear in the receiver input (``linear_qkv = False``,
as for Qwen3). The whole sparse MLP block is one MLP node, as in :mod:`.moe`."""

from __future__ import annotations

from .llama import LlamaAdapter
from .olmo2 import FullWidthQKNorm


class OlmoeAdapter(FullWidthQKNorm, LlamaAdapter):
    family = "olmoe"
    model_types = ("olmoe",)
    additive_residual = True  # the sparse masked forward applies (see Adapter.additive_residual)
    clips_qkv = True

    def attn_window(self, layer: int) -> int | None:
        return None  # OLMoE builds a plain causal mask (no sliding window)
