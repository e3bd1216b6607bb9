"""Post-norm families (Gemma-2, Gemma-3 text, OLMo-2): edge semantics across the post-attention norm.

The parametrised tests of test_runtime.py, test_patching.py and test_attribution.py run these
families too (tiny_models.FAMILIES); here: node and receiver patches against `transformers`
forward hooks, the shared/deduplicated receiver path against the dense one, EAP against a
finite difference of the patched forward, OLMo-2's full-width q/k norm, and the edge count of
Gemma-2-2B's shape.
"""

import pytest
import torch
from test_attribution import make_batch
from tiny_models import POST_NORM_FAMILIES, random_batch, tiny_model

from circuits import Patch, TracedModel, graph_for
from circuits.graph import expected_edge_count
from circuits.patching import PatchRunner
from circuits.runtime import default_position_ids
from circuits.runtime.block import receiver_rms
from circuits.scores import attribute, metric_of_runs

TOL = 1e-4


def hf_logits(model, ids, mask):
    pos = default_position_ids(mask, *ids.shape, ids.device)
    with torch.no_grad():
        return model(ids, attention_mask=mask, position_ids=pos).logits


def hooked_logits(model, clean, corr, mask, module, swap, pre=False):
    """Logits of the clean run with ``module``'s output (input with ``pre``) partly taken from the
    corrupted run: ``swap(clean_value, corrupted_value) -> value``."""
    store = {}
    if pre:
        h = module.register_forward_pre_hook(lambda m, args: store.__setitem__("v", args[0].detach().clone()))
    else:
        h = module.register_forward_hook(lambda m, args, out: store.__setitem__("v", out.detach().clone()))
    hf_logits(model, corr, mask)
    h.remove()
    if pre:
        h = module.register_forward_pre_hook(lambda m, args: (swap(args[0], store["v"]),))
    else:
        h = module.register_forward_hook(lambda m, args, out: swap(out, store["v"]))
    try:
        return hf_logits(model, clean, mask)
    finally:
        h.remove()


def head_slice(h, dh):
    """Swap head ``h``'s slice: the last axis of ``[B, P, H*dh]`` or axis 1 of ``[B, H, P, dh]``."""

    def swap(x, y):
        x = x.clone()
        if x.dim() == 4:
            x[:, h] = y[:, h]
        else:
            x[..., h * dh:(h + 1) * dh] = y[..., h * dh:(h + 1) * dh]
        return x

    return swap


def everything(x, y):
    return y


@pytest.fixture(scope="module", params=POST_NORM_FAMILIES)
def fam(request):
    model = tiny_model(request.param)
    return request.param, model, TracedModel(model)


def patched(tm, clean, corr, mask, keep):
    with torch.no_grad():
        zc = tm.run(corr, mask, record=True).senders
        return tm.run(clean, mask, patch=Patch(keep.float(), zc)).logits


def test_sender_patches_equal_forward_hooks(fam):
    """Every edge out of one node patched = that node's output swapped inside `transformers`:
    the input (embedding output), a head (its slice of o_proj's input, before the post-norm),
    an MLP (the post-feed-forward norm's output)."""
    _, model, tm = fam
    clean, corr, mask = random_batch()
    g, dh, real = graph_for(model), tm.adapter.head_dim, mask.bool()
    layers = model.model.layers
    cases = [
        ("input", model.model.embed_tokens, everything, False),
        ("a0.h1", layers[0].self_attn.o_proj, head_slice(1, dh), True),
        ("a1.h2", layers[1].self_attn.o_proj, head_slice(2, dh), True),
        ("m0", layers[0].post_feedforward_layernorm, everything, False),
    ]
    for node, module, swap, pre in cases:
        ref = hooked_logits(model, clean, corr, mask, module, swap, pre)
        out = patched(tm, clean, corr, mask, ~g.node_mask_to_edge_mask([node]))
        assert (out - ref)[real].abs().max() <= TOL, node
        assert (ref - hf_logits(model, clean, mask))[real].abs().max() > 1e-3, node  # the swap matters


def test_receiver_patches_equal_forward_hooks(fam):
    """Every edge into one receiver patched = that receiver computed from the corrupted run: a query
    (q_norm's output slice where the model normalises queries, else q_proj's), an MLP's input, the
    final norm's input."""
    name, model, tm = fam
    clean, corr, mask = random_batch()
    lay, dh, real = tm.layout, tm.adapter.head_dim, mask.bool()
    attn = model.model.layers[1].self_attn
    q_mod = getattr(attn, "q_norm", None) or attn.q_proj
    cases = [
        ("a1.h2<q>", q_mod, head_slice(2, dh), False),
        ("m1", model.model.layers[1].mlp, everything, True),
        ("logits", model.model.norm, everything, True),
    ]
    for recv, module, swap, pre in cases:
        ref = hooked_logits(model, clean, corr, mask, module, swap, pre)
        keep = lay.edge_receiver != lay.receiver_index(recv)
        out = patched(tm, clean, corr, mask, keep)
        assert (out - ref)[real].abs().max() <= TOL, recv
        assert (ref - hf_logits(model, clean, mask))[real].abs().max() > 1e-3, recv


def test_shared_norms_equal_dense_path(fam):
    """Without autograd, receivers with the same weights on a layer's heads share one normalised sum;
    with weights that require grad every receiver gets its own. Both must agree, for kept, removed,
    mixed and fractional receivers, with several masks at once."""
    _, _, tm = fam
    clean, corr, mask = random_batch()
    lay = tm.layout
    gen = torch.Generator().manual_seed(0)
    K = 4
    keep = torch.ones(K, lay.n_edges)
    kind = torch.randint(0, 3, (K, lay.n_receivers), generator=gen)[:, lay.edge_receiver]  # per receiver
    keep[kind == 1] = 0.0
    keep[kind == 2] = (torch.rand(int((kind == 2).sum()), generator=gen) < 0.5).float()
    keep[3] = torch.rand(lay.n_edges, generator=gen)  # fractional
    with torch.no_grad():
        zc = tm.run(corr, mask, record=True).senders
        fast = tm.run(clean, mask, patch=Patch(keep, zc)).logits
    dense = tm.run(clean, mask, patch=Patch(keep.clone().requires_grad_(True), zc)).logits.detach()
    real = mask.bool().repeat(K, 1)
    assert (fast - dense)[real].abs().max() <= 1e-5


def test_receivers_sharing_a_patched_sum_read_their_own(fam):
    """One mask whose receivers fall into several groups with the same weights on a layer's heads (all
    removed; the even heads removed; the odd ones) besides kept and mixed ones: each receiver reads its
    group's normalised sum, as the per-receiver path (weights that require grad) computes it."""
    _, _, tm = fam
    clean, corr, mask = random_batch()
    lay = tm.layout
    gen = torch.Generator().manual_seed(1)
    sender = lay.edge_sender
    kind = torch.randint(0, 5, (lay.n_receivers,), generator=gen)[lay.edge_receiver]  # per receiver
    head = sender % (lay.n_heads + 1)  # 0: the input or an MLP, 1..H: a head (senders are grouped per layer)
    keep = torch.ones(lay.n_edges)
    keep[kind == 1] = 0.0
    keep[(kind == 2) & (head % 2 == 0)] = 0.0
    keep[(kind == 3) & (head % 2 == 1)] = 0.0
    mixed = kind == 4
    keep[mixed] = (torch.rand(int(mixed.sum()), generator=gen) < 0.5).float()
    with torch.no_grad():
        zc = tm.run(corr, mask, record=True).senders
        fast = tm.run(clean, mask, patch=Patch(keep, zc)).logits
    dense = tm.run(clean, mask, patch=Patch(keep.clone().requires_grad_(True), zc)).logits.detach()
    real = mask.bool()
    assert (fast - dense)[real].abs().max() <= 1e-5


def test_post_attention_rms_equals_the_norm_module(fam):
    """The post-attention norm as a ReceiverNorm (``x * rsqrt(mean(x²) + eps) * gain``, the model's gain and eps,
    :func:`receiver_rms`) is the model's own module, normalising in place too."""
    tm = TracedModel(tiny_model(fam[0]))  # its own copy: the gains are changed below
    x = torch.randn(3, 5, tm.adapter.d_model, generator=torch.Generator().manual_seed(0)) * 3
    for layer in range(tm.adapter.n_layers):
        norm = tm.adapter.post_attn_norm(layer)
        with torch.no_grad():
            norm.weight.normal_()  # random gains (a fresh model's are all 0 or 1)
            want = norm(x)
            rms = receiver_rms(norm, tm.adapter.rms_norm, tm.adapter.rms_weight_offset)
            gain, eps = rms.gain, rms.eps
            assert (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain - want).abs().max() <= 1e-5
            assert (rms.normalise_(x.clone()) - want).abs().max() <= 1e-5


def test_resumed_masked_runs_equal_full_runs(fam):
    """Masks that agree with a base mask before layer 1 resume from the base run's recorded prefix (shared
    by every mask): the prefix's heads and input are read through the same norms as a full run's."""
    _, _, tm = fam
    runner = PatchRunner(tm, [make_batch()], "logit_diff")
    lay, gen = tm.layout, torch.Generator().manual_seed(0)
    base = (torch.rand(lay.n_edges, generator=gen) > 0.3).float()
    masks = base.repeat(4, 1)
    later = lay.edge_layer(torch.arange(lay.n_edges)) >= 1
    masks[:, later] = (torch.rand(4, int(later.sum()), generator=gen) > 0.5).float()
    full = runner.evaluate(masks)["m"]
    resumed = runner.evaluate(masks, resume_from=(1, runner.base_runs(base)))["m"]
    assert (full - resumed).abs().max() <= 1e-5
    assert (full - full.mean()).abs().max() > 1e-3  # the masks do differ


def test_unpatched_layers_cost_no_norm(fam, monkeypatch):
    """One removed edge from a layer-0 head: later receiver groups that keep all of layer 0 run no extra
    norm; the one group with that receiver normalises two sums (the live one and the patched receiver's),
    not one per receiver. (The module is called for every norm here, so its hook sees them all; the
    in-place RMSNorm, runtime.block.receiver_rms, normalises the same sums.)"""
    _, model, tm = fam
    monkeypatch.setattr(tm.adapter, "rms_norm", False)
    clean, corr, mask = random_batch()
    lay = tm.layout
    rows = []
    norm = model.model.layers[0].post_attention_layernorm
    h = norm.register_forward_hook(lambda m, args, out: rows.append(args[0].numel() // args[0].shape[-1]))
    keep = torch.ones(lay.n_edges)
    keep[lay.edge_index("a0.h1->a1.h3<v>")] = 0.0
    try:
        patched(tm, clean, corr, mask, keep)
    finally:
        h.remove()
    slab = clean.numel()  # one [B, P, d] sum
    # the corrupted run's block, the patched run's block, the live sum and the one patched receiver's sum
    assert sum(rows) == 4 * slab, [r // slab for r in rows]


def test_eap_equals_finite_difference(fam):
    """EAP on a post-norm model = ∂m/∂keep_e of the patched forward (central difference), for a third of the
    edges, every kind: edges from heads pair the head's pre-norm delta with the gradient at the receiver's
    pre-norm sum. (The model runs in float64, but `transformers`' RMSNorms compute in float32: the step is
    1e-3 and the tolerance 0.1% of the largest score; pairing head deltas with ∂L/∂in_v instead is off by
    about the largest score itself.)"""
    name, _, _ = fam
    tm = TracedModel(tiny_model(name, dtype=torch.float64))
    batch = make_batch(B=2, P=6)
    eap = attribute(tm, [batch], "logit_diff", "eap").scores.double()
    runner = PatchRunner(tm, [batch], "logit_diff", max_rows=1024)
    E, eps = tm.layout.n_edges, 1e-3
    edges = torch.arange(0, E, 3)
    bump = torch.zeros(len(edges), E, dtype=torch.float64)
    bump[torch.arange(len(edges)), edges] = eps
    vals = runner.evaluate(torch.cat([1 + bump, 1 - bump]))["m"]
    fd = (vals[:len(edges)] - vals[len(edges):]) / (2 * eps)
    heads = tm.layout.sender_time[tm.layout.edge_sender[edges]] % 2 == 1
    assert fd[heads].abs().max() > 1e-3  # edges from heads carry signal
    assert (eap[edges] - fd).abs().max() <= 1e-3 * fd.abs().max(), float((eap[edges] - fd).abs().max())


@pytest.mark.parametrize("name", ["gemma2", "olmo2"])
def test_eap_ig_edges_completeness(name):
    """Integrated gradients over the edge mask on a post-norm model: every receiver reads every layer
    through one shared fractional mix, probed at that mix's pre-norm sum; the scores still sum to
    m(clean) - m(corrupted) (midpoint rule, 1% at 16 steps as for additive models)."""
    tm = TracedModel(tiny_model(name))
    batch = make_batch()
    m_clean, m_corr = metric_of_runs(tm, [batch], "logit_diff")
    total = m_clean - m_corr
    edges = attribute(tm, [batch], "logit_diff", "eap-ig-edges", steps=16).scores.sum().item()
    assert abs(total) > 1e-2
    assert abs(edges - total) <= 0.01 * abs(total)


def test_olmo2_full_width_qk_norm():
    """OLMo-2's convention: a q/k receiver's own input is projected for every head, normalised over the
    full width, and that head's (key/value group's) slice taken; shared inputs give the model's q/k."""
    model = tiny_model("olmo2")
    a = TracedModel(model).adapter
    attn = model.model.layers[1].self_attn
    H, dh, rep = a.n_heads, a.head_dim, a.n_heads // a.n_kv_heads
    x = torch.randn(H, 2, 5, a.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q, k, v = a.project_qkv(1, x, x, x)  # [B, H, P, dh]
        heads = torch.arange(H).repeat(3)
        comp = torch.arange(3).repeat_interleave(H)
        rows = a.project_heads(1, x.repeat(3, 1, 1, 1), heads, comp)  # [3H, B, P, dh]
        for h in range(H):
            q_ref = attn.q_norm(attn.q_proj(x[h]))[..., h * dh:(h + 1) * dh]
            g = h // rep
            k_ref = attn.k_norm(attn.k_proj(x[h]))[..., g * dh:(g + 1) * dh]
            v_ref = attn.v_proj(x[h])[..., g * dh:(g + 1) * dh]
            for got, ref in ((q[:, h], q_ref), (k[:, h], k_ref), (v[:, h], v_ref)):
                assert (got - ref).abs().max() <= 1e-6
            for c, ref in enumerate((q_ref, k_ref, v_ref)):
                assert (rows[c * H + h] - ref).abs().max() <= 1e-6
        shared = a.project_qkv(1, x[0], x[0], x[0])[0]
        assert (shared - attn.q_norm(attn.q_proj(x[0])).view(2, 5, H, dh).transpose(1, 2)).abs().max() <= 1e-6


def test_gemma2_2b_edge_count():
    """Post-norms change what an edge carries, not which edges exist: Gemma-2-2B's shape (26 layers,
    8 query heads, 4 key/value heads, d = 2304) has the sequential-block count, 74,218 edges."""
    from transformers import Gemma2Config

    cfg = Gemma2Config(num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, hidden_size=2304,
                       head_dim=256, intermediate_size=9216)
    g = graph_for(cfg)
    assert g.n_edges == expected_edge_count(26, 8) == 74218
