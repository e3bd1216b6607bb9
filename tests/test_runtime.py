import pytest
import torch
from tiny_models import FAMILIES, VOCAB, random_batch, tiny_model
from transformers import GPT2Config, T5Config

from circuits import Patch, TracedModel, graph_for
from circuits.models import adapter_class
from circuits.runtime import default_position_ids

TOL = 1e-4


def hf_logits(model, ids, mask):
    pos = default_position_ids(mask, *ids.shape, ids.device)
    with torch.no_grad():
        return model(ids, attention_mask=mask, position_ids=pos).logits


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    model = tiny_model(request.param)
    return request.param, model, TracedModel(model)


def test_traced_forward_reproduces_transformers(family):
    _, model, tm = family
    clean, _, mask = random_batch()
    real = mask.bool()
    with torch.no_grad():
        out = tm.run(clean, mask).logits
    assert (out - hf_logits(model, clean, mask))[real].abs().max() <= TOL
    # no padding at all: every position compared
    ids = clean[:1]
    with torch.no_grad():
        assert (tm.run(ids).logits - model(ids).logits).abs().max() <= TOL


def test_answer_position_logits_equal_full_run(family):
    """With logit_positions and nothing patched, the last layer runs at those positions only
    (queries, output, MLP); the logits must equal the full run's at the same positions, also
    with left padding, sliding windows and resuming from a recorded prefix."""
    _, model, tm = family
    clean, _, mask = random_batch(P=12)
    pos = torch.tensor([11, 7, 11, 3])[: clean.shape[0]].clamp(max=clean.shape[1] - 1)
    with torch.no_grad():
        full = tm.run(clean, mask, record=True, record_resid=True)
        at = tm.run(clean, mask, logit_positions=pos).logits
        rows = torch.arange(clean.shape[0])
        assert at.shape == (clean.shape[0], 1, full.logits.shape[-1])
        assert (at[:, 0] - full.logits[rows, pos]).abs().max() <= TOL
        last = tm.layout.n_layers - 1
        from circuits.runtime import Prefix
        resumed = tm.run(clean, mask, logit_positions=pos, resume=Prefix(last, full.resid[last], full.senders)).logits
        assert (resumed - at).abs().max() <= TOL


def test_logit_columns_equal_the_full_logits_there(family):
    """``logit_columns`` computes the LM head's rows for those tokens alone (soft-capping included); the
    logits equal the full ones in those columns, patched or not."""
    _, model, tm = family
    clean, corr, mask = random_batch(P=12)
    pos = torch.full((clean.shape[0],), clean.shape[1] - 1)
    cols = torch.tensor([VOCAB - 1, 3, 0, 17])
    keep = (torch.rand(tm.layout.n_edges, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    with torch.no_grad():
        ref = tm.run(corr, mask, record=True).senders
        for patch in (None, Patch(keep, ref)):
            full = tm.run(clean, mask, patch=patch, logit_positions=pos).logits
            some = tm.run(clean, mask, patch=patch, logit_positions=pos, logit_columns=cols).logits
            assert some.shape == (*full.shape[:-1], len(cols))
            assert (some - full[..., cols]).abs().max() <= TOL


def test_patched_answer_position_logits_equal_full_run(family):
    """Patched (buffered) runs with logit_positions run the last layer's queries, heads and MLP at those
    positions only; the logits must equal the full patched run's there, for masks that patch nothing,
    everything, a random half (per-receiver inputs), a few receivers (the shared/own split), continuous
    weights, a last layer left unpatched, with left padding and resumed from a recorded prefix."""
    _, model, tm = family
    clean, corr, mask = random_batch(P=12)
    g = tm.layout
    pos = torch.tensor([11, 7, 11, 3])[: clean.shape[0]].clamp(max=clean.shape[1] - 1)
    gen = torch.Generator().manual_seed(1)
    keep = [torch.ones(g.n_edges), torch.zeros(g.n_edges), (torch.rand(g.n_edges, generator=gen) > 0.5).float(),
            (torch.rand(g.n_edges, generator=gen) > 0.03).float(), torch.rand(g.n_edges, generator=gen)]
    untouched = (torch.rand(g.n_edges, generator=gen) > 0.5).float()
    r0, _ = g.attn_receivers(g.n_layers - 1)
    untouched[g.edge_receiver >= r0] = 1.0  # every edge into the last layer and the logits kept
    keep = torch.stack(keep + [untouched])
    rows = torch.arange(clean.shape[0])
    with torch.no_grad():
        ref = tm.run(corr, mask, record=True, record_resid=True)
        for k in [keep, keep[2]]:  # all masks in one run, and one mask alone
            full = tm.run(clean, mask, patch=Patch(k, ref.senders)).logits.view(-1, clean.shape[0], *ref.logits.shape[1:])
            at = tm.run(clean, mask, patch=Patch(k, ref.senders), logit_positions=pos).logits
            assert at.shape[1] == 1
            assert (at.view(full.shape[0], clean.shape[0], -1) - full[:, rows, pos]).abs().max() <= TOL
        # the last MLP really ran at the answer positions only (buffered families; post-norm ones run it in full)
        seen, blk = [], tm.blocks[-1]
        blk.mlp = lambda x, f=blk.mlp: seen.append(x.shape[-2]) or f(x)
        try:
            tm.run(clean, mask, patch=Patch(keep[2], ref.senders), logit_positions=pos)
        finally:
            del blk.mlp
        assert seen == [clean.shape[1] if tm.adapter.post_norm else 1]
        last = g.n_layers - 1
        from circuits.runtime import Prefix
        prefix = Prefix(last, ref.resid[last], ref.senders)
        full = tm.run(clean, mask, patch=Patch(keep[2], ref.senders), resume=prefix).logits
        at = tm.run(clean, mask, patch=Patch(keep[2], ref.senders), resume=prefix, logit_positions=pos).logits
        assert (at[:, 0] - full[rows, pos]).abs().max() <= TOL


def test_receiver_classes_equal_per_receiver_path(family):
    """Without autograd, a patched layer splits its q/k/v receivers into kept / fully patched /
    mixed (own input); it must equal the per-group einsum path used under autograd."""
    _, model, tm = family
    clean, corr, mask = random_batch()
    g = tm.layout
    gen = torch.Generator().manual_seed(0)
    K = 5
    W = torch.zeros(K, g.n_senders, g.n_receivers)
    for k in range(2, K):  # masks 0 (nothing patched) and 1 (everything) are the extremes
        kind = torch.randint(0, 3, (g.n_receivers,), generator=gen)
        W[k][:, kind == 1] = 1.0
        mixed = kind == 2
        W[k][:, mixed] = (torch.rand(g.n_senders, int(mixed.sum()), generator=gen) < 0.5).float()
    W[1] = 1.0
    W[4][W[4] == 1] = 0.5  # fractional weights are mixed, not removed
    with torch.no_grad():
        zc = tm.run(corr, mask, record=True).senders
        fast = tm.run(clean, mask, patch=Patch(1 - g.from_dense(W), zc)).logits
    with torch.enable_grad():  # not buffered: one einsum per sender group and receiver group
        ref = tm.run(clean, mask, patch=Patch(1 - g.from_dense(W), zc)).logits.detach()
    real = mask.bool().repeat(K, 1)
    assert (fast - ref)[real].abs().max() <= TOL
    assert (ref[:3] - ref[6:9])[mask.bool()].abs().max() > 1e-3  # the masks do differ


def test_all_edges_patched_reproduces_corrupted_run(family):
    _, model, tm = family
    clean, corr, mask = random_batch()
    real = mask.bool()
    with torch.no_grad():
        c = tm.run(corr, mask, record=True)
        patched = tm.run(clean, mask, patch=Patch(torch.zeros(tm.layout.n_edges), c.senders)).logits
    assert (patched - hf_logits(model, corr, mask))[real].abs().max() <= TOL


def test_no_edges_patched_is_clean_run(family):
    _, _, tm = family
    clean, corr, mask = random_batch()
    with torch.no_grad():
        c = tm.run(corr, mask, record=True)
        a = tm.run(clean, mask).logits
        b = tm.run(clean, mask, patch=Patch(torch.ones(tm.layout.n_edges), c.senders)).logits
    assert torch.equal(a, b)


def test_batch_of_masks_equals_one_by_one(family):
    _, _, tm = family
    clean, corr, mask = random_batch()
    B = clean.shape[0]
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(3, tm.layout.n_edges, generator=gen)  # fractional: interpolation
    with torch.no_grad():
        c = tm.run(corr, mask, record=True)
        batched = tm.run(clean, mask, patch=Patch(masks, c.senders)).logits
        for k in range(3):
            single = tm.run(clean, mask, patch=Patch(masks[k], c.senders)).logits
            assert (batched[k * B : (k + 1) * B] - single).abs().max() <= 1e-5


def _node_modules(model, tm, layer):
    """The module whose input is layer ``layer``'s concatenated head outputs (before ``W_O``), and
    layer 0's whole MLP block (for mixture-of-experts models: router, experts, shared expert)."""
    block = tm.adapter.block(layer)
    o_proj = block.attn.out_proj if hasattr(block, "attn") else block.self_attn.o_proj
    return o_proj, tm.adapter.mlp(0)


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3", "gptj", "mixtral", "qwen2_moe", "olmoe"])
def test_node_patch_matches_transformers_hooks(family):
    """Patching every edge out of one head / one MLP / the input equals swapping that node's output
    inside the `transformers` modules with forward hooks: an independent reference. Every sender
    kind (input, head, MLP) is patched, so every receiver kind (q, k, v, MLP, logits) reads it."""
    model = tiny_model(family)
    tm = TracedModel(model)
    clean, corr, mask = random_batch()
    layer, head, dh = 1, 2, tm.adapter.head_dim
    o_proj, mlp0 = _node_modules(model, tm, layer)
    embed = model.get_input_embeddings()
    store = {}

    def grab(mod, args):
        store["ctx"] = args[0].detach().clone()

    def grab_out(key):
        return lambda mod, args, out: store.__setitem__(key, out.detach().clone())

    hooks = [o_proj.register_forward_pre_hook(grab), mlp0.register_forward_hook(grab_out("mlp")),
             embed.register_forward_hook(grab_out("embed"))]
    hf_logits(model, corr, mask)
    [h.remove() for h in hooks]

    def swap(mod, args):
        x = args[0].clone()
        x[..., head * dh : (head + 1) * dh] = store["ctx"][..., head * dh : (head + 1) * dh]
        return (x,)

    hooks = [o_proj.register_forward_pre_hook(swap), mlp0.register_forward_hook(lambda mod, args, out: store["mlp"])]
    ref = hf_logits(model, clean, mask)
    [h.remove() for h in hooks]
    hook = embed.register_forward_hook(lambda mod, args, out: store["embed"])
    ref_input = hf_logits(model, clean, mask)
    hook.remove()
    g = graph_for(model)
    with torch.no_grad():
        c = tm.run(corr, mask, record=True)
        for nodes, want in (([f"a{layer}.h{head}", "m0"], ref), (["input"], ref_input)):
            keep = ~g.node_mask_to_edge_mask(nodes)
            out = tm.run(clean, mask, patch=Patch(keep.float(), c.senders)).logits
            assert (out - want)[mask.bool()].abs().max() <= TOL, nodes
            assert (out - hf_logits(model, clean, mask))[mask.bool()].abs().max() > 10 * TOL  # the patch matters


def test_olmoe_query_receiver_reads_through_full_width_norm():
    """OLMoE's q norm spans every head. Patching all edges into one query receiver a1.h2<q> means:
    that receiver's own input (here the corrupted run's residual) goes through the layer norm, the
    full-width q_proj and q_norm, and only then is sliced to head 2 -- checked against a hook that
    does exactly that inside the `transformers` module, the other heads left clean."""
    model = tiny_model("olmoe")
    tm = TracedModel(model)
    clean, corr, mask = random_batch()
    layer, head, dh = 1, 2, tm.adapter.head_dim
    attn = model.model.layers[layer].self_attn
    store = {}
    hook = model.model.layers[layer].input_layernorm.register_forward_hook(
        lambda mod, args, out: store.__setitem__("h", out.detach().clone()))
    hf_logits(model, corr, mask)
    hook.remove()

    def swap(mod, args, out):
        out = out.clone()
        own = mod.forward(attn.q_proj(store["h"]))  # full width (forward: no hook recursion), then head 2
        out[..., head * dh:(head + 1) * dh] = own[..., head * dh:(head + 1) * dh]
        return out

    with torch.no_grad():
        q_norm_hook = attn.q_norm.register_forward_hook(swap)
        ref = hf_logits(model, clean, mask)
        q_norm_hook.remove()
        keep = torch.ones(tm.layout.n_edges)
        keep[tm.layout.edge_receiver == tm.layout.receiver_index(f"a{layer}.h{head}<q>")] = 0
        c = tm.run(corr, mask, record=True)
        out = tm.run(clean, mask, patch=Patch(keep, c.senders)).logits
    real = mask.bool()
    assert (out - ref)[real].abs().max() <= TOL
    assert (out - hf_logits(model, clean, mask))[real].abs().max() > 10 * TOL


def test_record_shapes(family):
    _, _, tm = family
    clean, _, mask = random_batch()
    with torch.no_grad():
        out = tm.run(clean, mask, record=True)
    S = tm.layout.n_senders
    assert out.senders.shape == (S, *clean.shape, tm.adapter.d_model)
    assert out.logits.shape == (*clean.shape, VOCAB)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs(dtype):
    model = tiny_model("gpt2", dtype=dtype)
    tm = TracedModel(model)
    clean, corr, mask = random_batch()
    with torch.no_grad():
        c = tm.run(corr, mask, record=True)
        out = tm.run(clean, mask, patch=Patch(torch.full((tm.layout.n_edges,), 0.5), c.senders))
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
    ref = hf_logits(model, clean, mask)
    with torch.no_grad():
        assert (tm.run(clean, mask).logits.float() - ref.float())[mask.bool()].abs().max() < 0.1


def test_bad_inputs():
    model = tiny_model("gpt2")
    tm = TracedModel(model)
    clean, corr, mask = random_batch()
    with torch.no_grad():
        c = tm.run(corr, mask, record=True)
        with pytest.raises(ValueError, match="same shape"):
            tm.run(clean[:, :-1], mask[:, :-1], patch=Patch(torch.zeros(tm.layout.n_edges), c.senders))
        with pytest.raises(ValueError, match="edge mask must have shape"):
            tm.run(clean, mask, patch=Patch(torch.zeros(tm.layout.n_edges + 3), c.senders))
        with pytest.raises(ValueError, match="reference sender outputs"):
            tm.run(clean, mask, patch=Patch(torch.zeros(tm.layout.n_edges), c.senders[1:]))
        with pytest.raises(ValueError, match="attention_mask"):
            tm.run(clean, mask[:, :-1])
    with pytest.raises(NotImplementedError, match="Supported: gpt2"):
        adapter_class(T5Config())
    with pytest.raises(NotImplementedError, match="reorder_and_upcast_attn"):
        graph_for(GPT2Config(reorder_and_upcast_attn=True))



@pytest.mark.parametrize("name", ["FalconConfig", "GemmaConfig", "PhimoeConfig", "GPTBigCodeConfig"])
def test_close_unsupported_families_name_every_supported_one(name):
    """Decoder-only families that are not (yet) adapted fail with NotImplementedError listing every
    supported model_type, not with a wrong computation."""
    import transformers

    from circuits.models import SUPPORTED_MODEL_TYPES

    config = getattr(transformers, name)()
    with pytest.raises(NotImplementedError, match=f"model_type '{config.model_type}' is not supported") as err:
        graph_for(config)
    for model_type in SUPPORTED_MODEL_TYPES:
        assert model_type in str(err.value)
    assert {"gptj", "phi3", "mixtral", "qwen2_moe", "olmoe"} <= set(SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neo", "gptj", "llama"])
def test_fused_gelu_mlp_equals_the_module(family):
    """GPT-2-kind MLPs run with one fused tanh-GELU (the same function as transformers' five-op
    NewGELUActivation up to rounding); other MLPs, and any MLP in training mode, run as the module."""
    from circuits.models.base import tanh_gelu_mlp

    tm = TracedModel(tiny_model(family))
    mlp = tm.adapter.mlp(1)
    x = torch.randn(2, 5, tm.adapter.d_model, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        fused = tanh_gelu_mlp(mlp, x)
        assert (fused is None) == (family == "llama")
        if fused is not None:
            assert (fused - mlp(x)).abs().max() <= 1e-5
            mlp.train()
            try:
                assert tanh_gelu_mlp(mlp, x) is None  # dropout would differ
            finally:
                mlp.eval()
