"""Tiny random-init models of every supported family, for tests."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

VOCAB = 97


def tiny_config(family: str):
    """A 2-3 layer config of ``family`` small enough for fast tests."""
    if family == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=3, n_head=4)
    if family == "gpt_neo":
        return GPTNeoConfig(
            vocab_size=VOCAB, max_position_embeddings=64, hidden_size=32, num_layers=2, num_heads=4,
            attention_types=[[["global", "local"], 1]], window_size=5, intermediate_size=64,
        )
    if family == "gpt_neox":
        return GPTNeoXConfig(
            vocab_size=VOCAB, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, rotary_pct=0.5, use_parallel_residual=True,
        )
    if family == "gpt_neox_seq":
        return GPTNeoXConfig(
            vocab_size=VOCAB, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, rotary_pct=0.25, use_parallel_residual=False,
        )
    if family == "llama":
        return LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64,
        )
    if family == "mistral":
        return MistralConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, max_position_embeddings=64, sliding_window=6,
        )
    if family == "qwen2":
        return Qwen2Config(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64,
        )
    if family == "qwen3":
        from transformers import Qwen3Config

        return Qwen3Config(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        )
    return _tiny_config_more(family)


def _tiny_config_more(family: str):
    """Phi-3, GPT-J and the mixture-of-experts families (2 layers, 4 experts, top-2)."""
    import transformers as tf

    llama_like = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)
    if family == "phi3":  # partial rotary and a sliding window
        return tf.Phi3Config(**llama_like, intermediate_size=48, partial_rotary_factor=0.5, sliding_window=6)
    if family == "gptj":  # rotary on 4 of 8 head dims
        return tf.GPTJConfig(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
                             n_inner=64, bos_token_id=1, eos_token_id=2)
    moe = dict(num_experts_per_tok=2, intermediate_size=24)
    if family == "mixtral":
        return tf.MixtralConfig(**llama_like, **moe, num_local_experts=4)
    if family == "qwen2_moe":  # layer 0 sparse (shared expert + gate), layer 1 a dense MLP
        return tf.Qwen2MoeConfig(**llama_like, **moe, num_experts=4, moe_intermediate_size=24,
                                 shared_expert_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[1])
    if family == "olmoe":  # full-width q/k norms; clip_qkv low enough to clip
        return tf.OlmoeConfig(**llama_like, **moe, num_experts=4, clip_qkv=1.5)
    return _tiny_config_post_norm(family)


def _tiny_config_post_norm(family: str):
    """Gemma-2, Gemma-3 (text) and OLMo-2: attention outputs normalised before the residual."""
    if family == "gemma2":
        from transformers import Gemma2Config

        return Gemma2Config(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=4, query_pre_attn_scalar=12,
            attn_logit_softcapping=2.0, final_logit_softcapping=5.0,
        )
    if family == "gemma3":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=4, query_pre_attn_scalar=12,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        )
    if family == "olmo2":
        from transformers import Olmo2Config

        return Olmo2Config(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=1, bos_token_id=2, eos_token_id=3,
        )
    raise KeyError(family)


#: families whose attention output is normalised before it joins the residual (non-additive heads)
POST_NORM_FAMILIES = ["gemma2", "gemma3", "olmo2"]
FAMILIES = ["gpt2", "gpt_neo", "gpt_neox", "gpt_neox_seq", "llama", "mistral", "qwen2", "qwen3",
            "phi3", "gptj", "mixtral", "qwen2_moe", "olmoe", *POST_NORM_FAMILIES]


def tiny_model(family: str, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), attn_implementation="eager").to(dtype)
    # random-init biases are zero in several families; make them non-zero so tests see them
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
            elif "norm" in name or "ln" in name:
                p.normal_(1.0, 0.1)
    return model.eval()


def random_batch(B: int = 3, P: int = 9, seed: int = 1, pad: bool = True):
    """Clean and corrupted ids plus a left-padded attention mask."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB, (B, P), generator=g)
    corrupted = torch.randint(0, VOCAB, (B, P), generator=g)
    mask = torch.ones(B, P, dtype=torch.long)
    if pad and B > 1:
        mask[1, :2] = 0
        if B > 2:
            mask[2, :4] = 0
    return clean, corrupted, mask


def sensitive_llama(seed: int = 0):
    """The tiny Llama with a large init: its output depends strongly on the input, so m(N) and m(∅)
    differ by several nats of KL (the default tiny init gives ~1e-3) and circuits have real structure."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("llama")
    cfg.initializer_range = 0.5
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()

