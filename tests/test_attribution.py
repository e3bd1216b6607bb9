"""Attribution scores against their definitions and against exact patching."""

import pytest
import torch
from scipy.stats import pearsonr
from tiny_models import FAMILIES, VOCAB, random_batch, tiny_model

from circuits import TracedModel
from circuits.metrics import logit_diff
from circuits.patching import exact_edge_effects
from circuits.runtime import Patch
from circuits.scores import METHODS, attribute, metric_of_runs
from circuits.tasks.base import Batch


def make_batch(seed=1, B=4, P=8):
    clean, corr, mask = random_batch(B=B, P=P, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    return Batch(
        clean=clean, corrupted=corr, attention_mask=mask,
        answers=torch.randint(0, VOCAB, (B, 1), generator=g), wrong=torch.randint(0, VOCAB, (B, 1), generator=g),
        answer_pos=torch.full((B,), P - 1),
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_eap_equals_definition(family):
    """EAP score = (z_corr - z_clean) · ∂L/∂in_v, here computed independently per example as the
    gradient of L = -logit_diff with respect to a per-edge patch weight at zero (∂in_v/∂w_e =
    z_corr - z_clean), one example at a time, no receiver hooks involved."""
    tm = TracedModel(tiny_model(family))
    batch = make_batch()
    got = attribute(tm, [batch], logit_diff, "eap").scores
    E = tm.layout.n_edges
    ref = torch.zeros(E)
    for i in range(len(batch)):
        sl = slice(i, i + 1)
        ids, corr, am = batch.clean[sl], batch.corrupted[sl], batch.attention_mask[sl]
        one = Batch(ids, corr, am, batch.answers[sl], batch.wrong[sl], batch.answer_pos[sl])
        with torch.no_grad():
            zc = tm.run(corr, am, record=True).senders
        keep = torch.ones(E, requires_grad=True)  # ∂/∂w_e of the patch weight w = 1 - keep is -∂/∂keep_e
        logits = tm.run(ids, am, patch=Patch(keep, zc)).logits
        (grad,) = torch.autograd.grad(-logit_diff(logits, one).sum(), [keep])
        ref -= grad
    ref /= len(batch)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-3), (got - ref).abs().max()


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_ig_approaches_exact_patching(family):
    tm = TracedModel(tiny_model(family))
    batch = make_batch()
    exact = exact_edge_effects(tm, [batch], "logit_diff").numpy()
    r_ig = pearsonr(attribute(tm, [batch], "logit_diff", "eap-ig-inputs", steps=32).scores.numpy(), exact)[0]
    r_eap = pearsonr(attribute(tm, [batch], "logit_diff", "eap").scores.numpy(), exact)[0]
    assert r_ig >= 0.9
    assert r_ig >= r_eap - 1e-3


def test_completeness_sum_rules():
    """IG over the edge mask: Σ all scores -> m(clean) - m(corrupted) (midpoint rule, error O(1/m²)).
    IG over inputs: Σ scores of the input's edges -> the same (chain rule: ∂L/∂x0 = Σ_v ∂L/∂in_v)."""
    tm = TracedModel(tiny_model("llama"))
    batch = make_batch()
    m_clean, m_corr = metric_of_runs(tm, [batch], "logit_diff")
    total = m_clean - m_corr
    edges = attribute(tm, [batch], "logit_diff", "eap-ig-edges", steps=16).scores.sum().item()
    # midpoint error bound ~ max|f''| / (24 m²); 1% of the total is far above it and far below |total|
    assert abs(edges - total) <= 0.01 * abs(total) + 1e-6
    g = attribute(tm, [batch], "logit_diff", "eap-ig-inputs", steps=64)
    inp = g.scores[g.edge_sender == 0].sum().item()
    # left Riemann sum: error O(1/m); allow 5 %
    assert abs(inp - total) <= 0.05 * abs(total) + 1e-6


def test_methods_and_flags():
    tm = TracedModel(tiny_model("gpt2"))
    batch = make_batch()
    for method in METHODS:
        g = attribute(tm, [batch], "logit_diff", method, steps=2)
        assert g.scores.shape == (g.n_edges,) and torch.isfinite(g.scores).all()
        assert g.provenance.scoring.method == method
    a = attribute(tm, [batch], "logit_diff", "eap", absolute=True).scores
    assert (a >= 0).all()
    # batching does not change the average
    b1, b2 = make_batch(seed=1), make_batch(seed=2)
    both = attribute(tm, [b1, b2], "logit_diff", "eap").scores
    sep = (attribute(tm, [b1], "logit_diff", "eap").scores + attribute(tm, [b2], "logit_diff", "eap").scores) / 2
    assert torch.allclose(both, sep, atol=1e-6)


def test_padding_contributes_nothing():
    """Left-padded example: the same scores as the unpadded example alone."""
    tm = TracedModel(tiny_model("llama"))
    b = make_batch(B=3)
    i = 2  # padded with 4 pads
    unpadded = Batch(b.clean[i:, 4:], b.corrupted[i:, 4:], torch.ones(1, 4, dtype=torch.long), b.answers[i:], b.wrong[i:],
                     torch.tensor([3]))
    padded = Batch(b.clean[i:], b.corrupted[i:], b.attention_mask[i:], b.answers[i:], b.wrong[i:], b.answer_pos[i:])
    s1 = attribute(tm, [unpadded], "logit_diff", "eap").scores
    s2 = attribute(tm, [padded], "logit_diff", "eap").scores
    assert torch.allclose(s1, s2, atol=1e-5)


def test_bad_inputs():
    tm = TracedModel(tiny_model("gpt2"))
    batch = make_batch()
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribute(tm, [batch], "logit_diff", "magic")
    with pytest.raises(ValueError, match="empty"):
        attribute(tm, [], "logit_diff")
    with pytest.raises(ValueError, match="shape"):
        attribute(tm, [batch], lambda logits, b, c=None: logits[:, -1])
    with pytest.raises(ValueError, match="no gradient"):
        attribute(tm, [batch], "accuracy")
    with pytest.raises(ValueError, match="same length"):
        bad = Batch(batch.clean, batch.corrupted[:, :-1], batch.attention_mask, batch.answers, batch.wrong, batch.answer_pos)
        attribute(tm, [bad], "logit_diff")

    def nan_metric(logits, b, clean_logits=None):
        return logits[torch.arange(len(b)), -1, 0] * float("nan")

    with pytest.raises(ValueError, match="NaN|nan"):
        attribute(tm, [batch], nan_metric)


def test_answer_position_logits_equal_full_logits():
    tm = TracedModel(tiny_model("qwen2"))
    batch = make_batch()
    for method in ("eap", "eap-ig-edges"):
        a = attribute(tm, [batch], "kl_div", method, steps=2).scores
        b = attribute(tm, [batch], "kl_div", method, steps=2, full_logits=True).scores
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_answer_column_logits_give_the_same_scores(family, monkeypatch):
    """logit_diff reads only the answer tokens' logits, so attribution computes those columns alone (forward
    and backward through the LM head's rows for them); every method's scores equal those of the same metric
    on the full vocabulary."""
    from circuits.metrics import logit_diff
    from circuits.runtime import TracedModel as TM

    tm = TracedModel(tiny_model(family))
    batch = make_batch()
    widths = []
    real_run = TM.run
    monkeypatch.setattr(TM, "run", lambda self, *a, **k: widths.append(real_run(self, *a, **k)) or widths[-1])
    for method in ("eap", "eap-ig-inputs", "clean-corrupted", "eap-ig-edges"):
        widths.clear()
        fast = attribute(tm, [batch], "logit_diff", method, steps=2).scores
        assert {out.logits.shape[-1] for out in widths} == {len(torch.cat([batch.answers, batch.wrong]).unique())}
        full = attribute(tm, [batch], lambda *a: logit_diff(*a), method, steps=2).scores
        assert (fast - full).abs().max() <= 1e-6 * max(1.0, float(full.abs().max()))
        assert float(full.abs().max()) > 1e-3  # the scores are not all zero


@pytest.mark.parametrize("method", ["eap", "eap-ig-inputs", "eap-ig-edges"])
def test_runs_are_freed_without_the_cycle_collector(method, monkeypatch):
    """Every traced run's state (which holds all its activations) must be freed by reference
    counting as soon as the run is over: a reference cycle through an autograd hook is never
    collected and leaked one pass of activations per IG step."""
    import gc
    import weakref

    from circuits.runtime import RunState

    refs = []
    init = RunState.__init__

    def tracking_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        refs.append(weakref.ref(self))

    monkeypatch.setattr(RunState, "__init__", tracking_init)
    tm = TracedModel(tiny_model("llama"))
    gc.collect()
    gc.disable()
    try:
        attribute(tm, [make_batch()], logit_diff, method, steps=3)
        alive = sum(r() is not None for r in refs)
    finally:
        gc.enable()
    assert refs and alive == 0
