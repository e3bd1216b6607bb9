"""GPT-J (``GPTJForCausalLM``): attention and MLP in parallel off one LayerNorm, interleaved
(rotate-every-two) rotary on the first ``rotary_dim`` dims of each head, no q/k/v/o biases."""

from __future__ import annotations

from typing import Any

import torch

from .base import Adapter, AttnWeights, linear_heads, linear_out_heads


class GPTJAdapter(Adapter):
    family = "gptj"
    model_types = ("gptj",)
    blocks_path = "transformer.h"
    final_norm_path = "transformer.ln_f"
    attn_norm_name = mlp_norm_name = "ln_1"  # the MLP reads the attention's normalised input
    upcast_attention = True  # GPT-J computes attention scores in float32

    @classmethod
    def graph_shape(cls, config: Any) -> dict[str, Any]:
        return {"n_layers": int(config.n_layer), "n_heads": int(config.n_head), "parallel_attn_mlp": True}

    @classmethod
    def kv_heads(cls, config: Any) -> int:
        return int(config.n_head)

    @classmethod
    def get_head_dim(cls, config: Any) -> int:
        return int(config.n_embd // config.n_head)

    @classmethod
    def check_config(cls, config: Any) -> None:
        if getattr(config, "rotary_dim", None) is None:
            raise NotImplementedError("GPT-J with rotary_dim=None is not supported; set config.rotary_dim "
                                      "(the released GPT-J uses 64)")

    def embed(self, ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.model.transformer.wte(ids)

    def rotary(self, x: torch.Tensor, position_ids: torch.Tensor):
        sin, cos = self.model.transformer.rotary_emb(x, position_ids)  # each [B, P, rotary_dim / 2]
        return cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)  # [B, P, rotary_dim]

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate-every-two: dims (2i, 2i+1) form the i-th rotated pair."""
        rd = cos.shape[-1]
        x_rot, x_pass = x[..., :rd], x[..., rd:]
        pairs = torch.stack((-x_rot[..., 1::2], x_rot[..., ::2]), dim=-1).flatten(-2)
        out = x_rot * cos[:, None] + pairs * sin[:, None]
        return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out

    def attn_weights(self, layer: int) -> AttnWeights:
        a = self.block(layer).attn
        H = self.n_heads
        return AttnWeights(
            linear_heads(a.q_proj.weight, H),
            linear_heads(a.k_proj.weight, H),
            linear_heads(a.v_proj.weight, H),
            linear_out_heads(a.out_proj.weight, H),
            None,
            None,
            None,
            None,
        )
