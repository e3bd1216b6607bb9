"""Mixture-of-experts Llama relatives: Mixtral and Qwen2-MoE (with its shared expert and
shared-expert gate). Attention is the Llama family's; the whole sparse MLP block (router,
experts, shared expert) is one MLP node ``m{l}``: the runtime calls the model's own block on
the receiver's input, so the router reads the patched input just as the experts do."""

from __future__ import annotations

from .llama import LlamaAdapter


class MoEAdapter(LlamaAdapter):
    family = "moe"
    model_types = ("mixtral", "qwen2_moe")
