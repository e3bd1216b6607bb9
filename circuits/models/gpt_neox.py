"""GPT-NeoX / Pythia (``GPTNeoXForCausalLM``): partial rotary, fused per-head q/k/v, parallel residual."""

from __future__ import annotations

from typing import Any

import torch

from .base import Adapter, AttnWeights, linear_out_heads


class GPTNeoXAdapter(Adapter):
    family = "gpt_neox"
    model_types = ("gpt_neox",)
    blocks_path = "gpt_neox.layers"
    final_norm_path = "gpt_neox.final_layer_norm"
    additive_residual = True  # the sparse masked forward applies (see Adapter.additive_residual)

    @classmethod
    def graph_shape(cls, config: Any) -> dict[str, Any]:
        return {
            "n_layers": int(config.num_hidden_layers),
            "n_heads": int(config.num_attention_heads),
            "parallel_attn_mlp": bool(config.use_parallel_residual),
        }

    @classmethod
    def kv_heads(cls, config: Any) -> int:
        return int(config.num_attention_heads)

    @classmethod
    def get_head_dim(cls, config: Any) -> int:
        return int(config.hidden_size // config.num_attention_heads)

    def embed(self, ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.model.gpt_neox.embed_in(ids)

    def rotary(self, x: torch.Tensor, position_ids: torch.Tensor):
        return self.model.gpt_neox.rotary_emb(x, position_ids=position_ids)

    def attn_weights(self, layer: int) -> AttnWeights:
        a = self.block(layer).attention
        H, dh, d = self.n_heads, self.head_dim, self.d_model
        # query_key_value rows are laid out per head as [q | k | v] (each dh rows)
        W = a.query_key_value.weight.view(H, 3, dh, d)
        b = a.query_key_value.bias
        bq = bk = bv = None
        if b is not None:
            bb = b.view(H, 3, dh)
            bq, bk, bv = bb[:, 0], bb[:, 1], bb[:, 2]
        return AttnWeights(
            W[:, 0].transpose(1, 2),
            W[:, 1].transpose(1, 2),
            W[:, 2].transpose(1, 2),
            linear_out_heads(a.dense.weight, H),
            bq,
            bk,
            bv,
            a.dense.bias,
        )
