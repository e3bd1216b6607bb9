"""The per-receiver q/k/v paths of the patched forward equal their reference computations: the GQA
grouped projection, the slot-grouped OLMoE projection, and the buffered receiver inputs."""

import pytest
import torch
from tiny_models import random_batch, tiny_model

from circuits import Patch, TracedModel
from circuits.models.base import head_projection
from circuits.runtime import position_sums
from circuits.runtime.block import ReceiverNorm

TOL = 1e-5


@pytest.mark.parametrize("bias", [False, True])
def test_gqa_per_head_projection_equals_one_head_at_a_time(bias):
    """Query head h's k/v input goes through kv head h // rep's weights, also for a strided input
    (the buffered receiver inputs are a view of ``[B, P, R, d]``)."""
    g = torch.Generator().manual_seed(0)
    H, Hkv, B, P, d, dh = 6, 2, 2, 5, 8, 4
    W = torch.randn(Hkv, d, dh, generator=g)
    b = torch.randn(Hkv, dh, generator=g) if bias else None
    x = torch.randn(B, P, 3 * H, d, generator=g).permute(2, 0, 1, 3)[1::3]  # [H, B, P, d], strided
    out = head_projection(x, W, b)  # [B, H, P, dh]
    for h in range(H):
        want = x[h] @ W[h // (H // Hkv)] + (0 if b is None else b[h // (H // Hkv)])
        assert (out[:, h] - want).abs().max() <= TOL
    assert (out[:, 0] - out[:, 3]).abs().max() > 1e-3  # groups 0 and 1 use different weights


def _olmoe_reference(tm: TracedModel, layer: int, x: torch.Tensor, head: int, slot: int) -> torch.Tensor:
    """One receiver's q/k/v straight from the `transformers` modules: full width, norm, clamp, slice."""
    attn, dh = tm.adapter.block(layer).self_attn, tm.adapter.head_dim
    clip = tm.model.config.clip_qkv
    full = (attn.q_norm(attn.q_proj(x)), attn.k_norm(attn.k_proj(x)), attn.v_proj(x))[slot].clamp(-clip, clip)
    own = head if slot == 0 else head // (tm.adapter.n_heads // tm.adapter.n_kv_heads)
    return full[..., own * dh:(own + 1) * dh]


def test_olmoe_project_heads_equals_module_reference():
    """Rows grouped by slot (each pays only its own q, k or v projection) equal the module's own
    full-width computation, row by row, and the per-head project_qkv path agrees."""
    tm = TracedModel(tiny_model("olmoe"))
    a, H = tm.adapter, tm.adapter.n_heads
    g = torch.Generator().manual_seed(0)
    heads = torch.arange(H).repeat_interleave(3)
    comp = torch.arange(3).repeat(H)
    perm = torch.randperm(3 * H, generator=g)  # rows in mixed order
    heads, comp = heads[perm], comp[perm]
    x = 100 * torch.randn(3 * H, 2, 5, a.d_model, generator=g)  # large enough that v is clamped too
    with torch.no_grad():
        rows = a.project_heads(1, x, heads, comp)  # [3H, B, P, dh]
        for m in range(3 * H):
            want = _olmoe_reference(tm, 1, x[m], int(heads[m]), int(comp[m]))
            assert (rows[m] - want).abs().max() <= TOL
        by_slot = [x[(comp == c).nonzero().flatten()[heads[comp == c].argsort()]] for c in range(3)]  # [H, B, P, d]
        q, k, v = a.project_qkv(1, *by_slot)  # [B, H, P, dh]
    for c, t in enumerate((q, k, v)):
        want = rows[(comp == c).nonzero().flatten()[heads[comp == c].argsort()]].transpose(0, 1)
        assert (t - want).abs().max() <= TOL
    clipped = rows.abs() == tm.model.config.clip_qkv
    assert all(bool(clipped[comp == c].any()) for c in range(3))  # the clamp is exercised for q, k and v


@pytest.mark.parametrize("family", ["gpt2", "llama", "gptj", "olmoe"])
@pytest.mark.parametrize("kind", ["dense", "few kept", "few removed"])
def test_buffered_dense_inputs_equal_einsum_path(family, kind, monkeypatch):
    """Several fractional masks at once (every receiver mixed: the dense buffered path, one matmul per
    position over the [K, B*P, S, d] buffer; with fewer kept than removed edges, or the reverse, sums of
    only the weighted rows around the fully patched or the unpatched residual) equal the per-sender-group
    einsum path used under autograd."""
    tm = TracedModel(tiny_model(family))
    clean, corr, mask = random_batch()
    gen = torch.Generator().manual_seed(0)
    keep = torch.rand(3, tm.layout.n_edges, generator=gen)
    if kind != "dense":  # a third of the edges fractional, the rest removed (or kept); every sum by rows
        few = keep * (torch.rand(keep.shape, generator=gen) < 0.3)
        keep = few if kind == "few kept" else 1 - few
        monkeypatch.setattr(position_sums, "SPARSE_SHARE", 1.0)  # (tiny graphs: few sums would qualify)
    with torch.no_grad():
        ref = tm.run(corr, mask, record=True).senders
        fast = tm.run(clean, mask, patch=Patch(keep, ref)).logits
    with torch.enable_grad():
        slow = tm.run(clean, mask, patch=Patch(keep, ref)).logits.detach()
    real = mask.bool().repeat(3, 1)
    assert (fast - slow)[real].abs().max() <= 1e-6  # float32 rounding only (some masks change the logits ~1e-4)
    assert (fast[:3] - fast[3:6])[mask.bool()].abs().max() > 1e-4  # the masks differ


@pytest.mark.parametrize("family", ["llama", "olmoe", "gemma2", "gemma3", "gpt2"])
def test_receiver_norm_equals_the_module(family):
    """The few-pass RMSNorm used for many receivers' inputs equals the model's own module, with random
    gains (Gemma's norm multiplies by 1 + weight; LayerNorms are the modules themselves), called and folded."""
    tm = TracedModel(tiny_model(family))
    block = tm.blocks[1]
    x = torch.randn(6, 2, 5, tm.adapter.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        block.attn_norm.weight.normal_(generator=torch.Generator().manual_seed(1))
        want = block.attn_norm(x)
        assert (block.receiver_norm(x) - want).abs().max() <= TOL
        if isinstance(block.receiver_norm, ReceiverNorm):
            fold = block.receiver_norm.fold(x)
            assert (x * fold.scale * fold.weight - want).abs().max() <= TOL
    assert (block.receiver_norm is block.attn_norm) == (family == "gpt2")


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "phi3", "mixtral"])
@pytest.mark.parametrize("shared", [False, True])
def test_folded_norm_projection_equals_projecting_the_normalised_input(family, shared):
    """An RMSNorm folded into the q/k/v projections (NormFold: weight into the weights, per-row scale on
    the output) equals projecting the normalised input, per-head strided inputs (GQA included) and a
    shared input alike."""
    tm = TracedModel(tiny_model(family))
    block, a = tm.blocks[1], tm.adapter
    H, d = a.n_heads, a.d_model
    g = torch.Generator().manual_seed(1)
    shape = (2, 5, d) if shared else (2, 5, 3 * H, d)
    x = torch.randn(*shape, generator=g) * 3 + 5
    if not shared:
        x = x.permute(2, 0, 1, 3)  # [3H, B, P, d], strided like the buffered receiver inputs
    with torch.no_grad():
        fold = block.receiver_norm.fold(x)
        if shared:
            h = block.attn_norm(x)
            want, got = a.project_qkv(1, h, h, h), a.project_qkv(1, x, x, x, (fold, fold, fold))
        else:
            h = tm.layout.per_head_qkv(block.attn_norm(x))
            want = a.project_qkv(1, h[:, 0], h[:, 1], h[:, 2])
            got = block.project_own(x, tm.layout)
    for w, o in zip(want, got):
        assert (w - o).abs().max() <= 1e-4 * max(1.0, float(w.abs().max()))


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3"])
def test_folded_row_projection_equals_projecting_the_normalised_rows(family):
    """Block.project_rows (each row through its own head's q, k or v weights; the norm folded where it
    can be) equals projecting each normalised row through that head's weights one at a time."""
    tm = TracedModel(tiny_model(family))
    block, a = tm.blocks[1], tm.adapter
    g = torch.Generator().manual_seed(2)
    heads = torch.tensor([0, 1, 1, a.n_heads - 1, 2])
    slots = torch.tensor([0, 1, 2, 1, 0])
    x = torch.randn(len(heads), 2, 4, a.d_model, generator=g) * 3 + 5
    with torch.no_grad():
        assert isinstance(block.receiver_norm, ReceiverNorm)  # the folded path is the one tested
        got = block.project_rows(x, heads, slots)
        h = block.attn_norm(x)
        for m in range(len(heads)):
            want = a.project_heads(1, h[m:m + 1], heads[m:m + 1], slots[m:m + 1])
            assert (got[m:m + 1] - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))
