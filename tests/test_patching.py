"""Exact patching, ACDC and path patching on tiny models."""

import pytest
import torch
from test_attribution import make_batch
from tiny_models import FAMILIES, VOCAB, random_batch, tiny_model

from circuits import TracedModel
from circuits.metrics import get_metric
from circuits.models import graph_for
from circuits.patching import (
    PatchRunner,
    acdc,
    exact_edge_effects,
    iterative_prune,
    path_patching,
    path_patching_grid,
)
from circuits.runtime import Patch, Probe
from circuits.tasks.base import Batch


@pytest.fixture(scope="module")
def setup():
    tm = TracedModel(tiny_model("gpt2"))
    return tm, [make_batch(seed=3)]


def slow_effect(tm, batch, edge, metric="logit_diff"):
    """Reference: one dedicated patched forward with only ``edge`` patched."""
    m = get_metric(metric)
    with torch.no_grad():
        zc = tm.run(batch.corrupted, batch.attention_mask, record=True).senders
        clean = tm.run(batch.clean, batch.attention_mask).logits
        keep = torch.ones(tm.layout.n_edges)
        keep[edge] = 0.0
        patched = tm.run(batch.clean, batch.attention_mask, patch=Patch(keep, zc)).logits
    return float(m(clean, batch).mean() - m(patched, batch).mean())


def test_exact_effects_equal_slow_reference(setup):
    tm, data = setup
    eff = exact_edge_effects(tm, data, "logit_diff", max_rows=16)  # small chunks: many forwards
    for e in torch.linspace(0, tm.layout.n_edges - 1, 12).long().tolist():
        assert abs(eff[e].item() - slow_effect(tm, data[0], e)) < 1e-5


def test_progress_bars_do_not_change_results(setup, capsys):
    tm, data = setup
    runner = PatchRunner(tm, data, "logit_diff", max_rows=8)
    masks = (torch.rand(5, tm.layout.n_edges, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    with_bar = runner.evaluate(masks, progress=True)["m"]
    assert "patching" in capsys.readouterr().err
    assert torch.equal(with_bar, runner.evaluate(masks)["m"])
    edges = torch.arange(10)
    assert torch.equal(exact_edge_effects(None, None, edges=edges, runner=runner, progress=True)[edges],
                       exact_edge_effects(None, None, edges=edges, runner=runner)[edges])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("ablation,metric", [("patching", "logit_diff"), ("mean", "kl_div")])
def test_sparse_exact_effects_equal_patched_forward(family, ablation, metric):
    """The sparse single-edge path (one node recomputed, later layers plain, last layer at the
    answer positions) equals the general patched forward with a one-hot mask per edge, for
    every family, with left padding and answers at different positions."""
    tm = TracedModel(tiny_model(family))
    clean, corr, mask = random_batch(B=3, P=9)
    g = torch.Generator().manual_seed(7)
    batch = Batch(clean, corr, mask, torch.randint(0, VOCAB, (3, 1), generator=g),
                  torch.randint(0, VOCAB, (3, 1), generator=g), answer_pos=torch.tensor([8, 5, 8]))
    runner = PatchRunner(tm, [batch], metric, ablation=ablation, max_rows=8)  # chunks of 2 edges
    eff = exact_edge_effects(tm, [batch], runner=runner)
    E = tm.layout.n_edges
    dense = runner.metric_values(torch.cat([torch.ones(1, E), 1 - torch.eye(E)]))
    ref = runner.badness(dense[1:]) - runner.badness(dense[:1])
    scale = float(ref.abs().max())
    assert torch.isfinite(eff).all()
    atol = 1e-5 if metric == "logit_diff" else 2e-6  # float32 noise of log-probabilities ~ 1e-7
    assert scale > 50 * atol  # the comparison is not between zeros
    assert (eff - ref).abs().max() <= atol, (scale, float((eff - ref).abs().max()))


@pytest.mark.parametrize("sparse", [True, False])
def test_exact_effects_under_base_mask(setup, sparse):
    """With a base mask (edges already removed) each effect is taken against that circuit: relative to
    the circuit's run (sparse) and resumed from recorded prefixes (general) alike."""
    tm, data = setup
    E = tm.layout.n_edges
    base = (torch.rand(E, generator=torch.Generator().manual_seed(1)) > 0.3).float()
    edges = base.nonzero().flatten()[::7]
    runner = PatchRunner(tm, data, "logit_diff", sparse=sparse)
    eff = exact_edge_effects(None, None, edges=edges, base_mask=base, runner=runner)
    assert runner.sparse_stats.masks == (len(edges) + 1 if sparse else 0)
    r = PatchRunner(tm, data, "logit_diff", sparse=False)  # one general patched forward per mask
    masks = base.repeat(len(edges), 1)
    masks[torch.arange(len(edges)), edges] = 0
    ref = r.badness(r.metric_values(masks)) - r.badness(r.metric_values(base[None]))
    assert (eff[edges] - ref).abs().max() < 1e-5


def test_exact_effects_subset_and_names(setup):
    tm, data = setup
    names = ["input->a0.h0<q>", "a1.h2->logits", "m0->a2.h1<v>"]
    eff = exact_edge_effects(tm, data, "logit_diff", edges=names)
    idx = tm.layout.edge_index(names)
    assert torch.isfinite(eff[idx]).all() and int(torch.isfinite(eff).sum()) == 3


def sequential_acdc(tm, data, tau, metric="kl_div"):
    """Reference ACDC: one evaluation per edge, no batching, no skipping."""
    r = PatchRunner(tm, data, metric)
    g = graph_for(tm.model)
    cur = torch.ones(g.n_edges)
    cur_bad = float(r.badness(r.metric_values(cur[None]))[0])
    lookup = g.layout.edge_table
    for recv in reversed(range(g.n_receivers)):
        cand = lookup[:, recv]
        for e in cand[cand >= 0].flip(0).tolist():
            trial = cur.clone()
            trial[e] = 0
            bad = float(r.badness(r.metric_values(trial[None]))[0])
            if bad - cur_bad < tau + 1e-6:
                cur, cur_bad = trial, bad
    return cur > 0.5


@pytest.mark.parametrize("tau", [3e-4])
def test_acdc_matches_sequential_reference(tau):
    tm = TracedModel(tiny_model("gpt_neox"))  # 102 edges: the reference runs one forward per edge
    data = [make_batch(seed=3, B=3, P=6)]
    res = acdc(tm, data, tau)
    assert torch.equal(res.graph.in_circuit, sequential_acdc(tm, data, tau))
    assert sorted(res.order) == list(range(tm.layout.n_edges))


def test_acdc_thresholds(setup):
    tm, data = setup
    res = acdc(tm, data, 0.0)
    kept = res.graph.in_circuit
    tried = torch.tensor(res.order)
    decided_keep = tried[torch.tensor(res.kept)]
    # tau = 0: an edge is kept exactly when its removal raised the KL (beyond float noise)
    assert torch.equal(torch.sort(decided_keep).values, kept.nonzero().flatten())
    assert (res.scores[kept] > 1e-6).all()
    assert kept.sum() > 0
    assert acdc(tm, data, 1e9).graph.n_circuit_edges == 0
    with pytest.raises(ValueError, match="τ"):
        acdc(tm, data, -1.0)


def test_path_patching_to_all_receivers_is_node_patching(setup):
    tm, data = setup
    batch = data[0]
    g = graph_for(tm.model)
    sender = "a1.h2"
    all_receivers = [r for r in g.receivers if g.valid[g.sender_index(sender), g.receiver_index(r)]]
    pp = path_patching(tm, data, [sender], all_receivers, "logit_diff")
    s = g.sender_index(sender)
    with torch.no_grad():
        zc = tm.run(batch.corrupted, batch.attention_mask, record=True).senders

        def hook(s0, s1, z):  # ordinary activation patching of the head's output
            if s0 <= s < s1:
                z = z.clone()
                z[s - s0] = zc[s]
            return z

        clean = tm.run(batch.clean, batch.attention_mask).logits
        patched = tm.run(batch.clean, batch.attention_mask, probe=Probe(sender_hook=hook)).logits
    m = get_metric("logit_diff")
    assert abs(pp - float(m(patched, batch).mean() - m(clean, batch).mean())) < 1e-5


def test_path_patching_grid_and_errors(setup):
    tm, data = setup
    grid = path_patching_grid(tm, data, ["a2.h1<q>"], "logit_diff")
    assert grid.shape == (3, 4)
    assert torch.isfinite(grid[:2]).all() and torch.isnan(grid[2]).all()  # layer 2 is not upstream of itself
    one = path_patching(tm, data, ["a0.h3"], ["a2.h1<q>"], "logit_diff")
    assert abs(grid[0, 3].item() - one) < 1e-5
    with pytest.raises(ValueError, match="not downstream"):
        path_patching(tm, data, ["a2.h0"], ["a1.h0<q>"], "logit_diff")
    with pytest.raises(ValueError, match="empty sender"):
        path_patching(tm, data, [], ["logits"], "logit_diff")


def test_iterative_prune(setup):
    tm, data = setup
    g = iterative_prune(tm, data, 20, "logit_diff")
    assert g.n_circuit_edges == 20


@pytest.mark.parametrize("name", ["marker_copy", "rope_induction"])
def test_acdc_recovers_planted_circuit(name):
    from circuits.zoo.planted import ground_truth, load_planted, planted_task

    model, _ = load_planted(name)
    res = acdc(model, planted_task(name, n=16, seed=0), 0.1, "kl_div")
    assert torch.equal(res.graph.in_circuit, ground_truth(name).in_circuit)



def test_dense_forwards_split_their_masks_on_the_cpu_with_the_same_values(setup, monkeypatch):
    """On the CPU the general patched forward stacks at most ``CPU_LAYER_BYTES`` of per-receiver inputs per
    layer; evaluating the masks one per forward gives the values of all of them in one."""
    import circuits.patching.runner as runner_module

    tm, batches = setup
    masks = (torch.rand(5, tm.layout.n_edges, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    runner = PatchRunner(tm, batches, "logit_diff", sparse=False, max_rows=64)
    p = runner.prepared[0]
    assert runner.dense_masks_per_forward(p) == runner.rows_per_forward(p) > 1  # a tiny model: no limit
    together = runner.metric_values(masks)
    monkeypatch.setattr(runner_module, "cpu_dense_masks", lambda *args: 1)  # one mask per forward
    assert runner.dense_masks_per_forward(p) == 1
    apart = runner.metric_values(masks)
    assert (together - apart).abs().max() <= 1e-5 and together.std() > 0

