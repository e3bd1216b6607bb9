"""Edge Pruning: hard-concrete edge masks trained against KL(full ‖ circuit) with a Lagrangian edge budget."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import VOCAB, random_batch, sensitive_llama

from circuits.circuit.prune import topn_masks
from circuits.graph import Graph
from circuits.patching import PatchRunner
from circuits.runtime import TracedModel
from circuits.scores.edge_pruning import (
    edge_pruning,
    expected_l0,
    hard_concrete_mean,
    hard_concrete_sample,
)
from circuits.tasks.base import Batch

TARGET = 20
FAST = dict(steps=30, lr=0.3, lambda_lr=10.0, init=1.0, early_stop=False)  # reaches the budget in 30 steps here


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one thread (see tiny_models.one_thread)."""


def make_batch(B: int = 8, P: int = 6, seed: int = 1) -> Batch:
    clean, corr, mask = random_batch(B=B, P=P, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    return Batch(clean=clean, corrupted=corr, attention_mask=mask,
                 answers=torch.randint(0, VOCAB, (B, 1), generator=g),
                 wrong=torch.randint(0, VOCAB, (B, 1), generator=g), answer_pos=torch.full((B,), P - 1))


@pytest.fixture(scope="module")
def setup():
    model = sensitive_llama()
    return model, [make_batch()]


@pytest.fixture(scope="module")
def pruned(setup):
    model, data = setup
    return edge_pruning(model, data, target_edges=TARGET, seed=0, **FAST)


def test_expected_edges_decrease_toward_the_target(setup, pruned):
    model, _ = setup
    E = pruned.n_edges
    info = pruned.provenance.extra["edge_pruning"]
    trace = [row[1] for row in info["trace"]]
    assert info["steps_run"] == 30 and len(trace) == 30
    start = float(expected_l0(torch.full((E,), 1.0), 2 / 3, (-0.1, 1.1)))
    assert trace[0] == pytest.approx(start, rel=0.02)
    # the budget anneals from E to TARGET over the first half; the expected count follows it down
    assert trace[-1] < 0.5 * trace[0]
    assert abs(info["expected_edges"] - TARGET) < 0.25 * abs(start - TARGET)
    late = trace[10:]
    assert sum(b < a for a, b in zip(late, late[1:])) >= 0.8 * (len(late) - 1), "the count should fall steadily"
    assert info["expected_edges"] == pytest.approx(float(expected_l0(pruned.scores, 2 / 3, (-0.1, 1.1))), rel=1e-5)
    assert info["lambdas"][0] > 0 and info["lambdas"][1] > 0  # gradient ascent on a violated budget
    # the model's parameters got no gradient and are trainable again afterwards
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_graph_scores_circuit_and_provenance(setup, pruned):
    _, data = setup
    assert pruned.scores.shape == (pruned.n_edges,) and pruned.scores.dtype == torch.float32
    assert not torch.allclose(pruned.scores, torch.full_like(pruned.scores, 1.0))
    gate = hard_concrete_mean(pruned.scores, (-0.1, 1.1))
    assert torch.equal(pruned.in_circuit, gate > 0.5)
    assert 0 < pruned.n_circuit_edges < pruned.n_edges
    sc = pruned.provenance.scoring
    assert sc.method == "edge-pruning" and sc.steps == 30 and sc.n_examples == len(data[0]) and sc.metric == "kl_div"
    assert not sc.absolute
    # top-n on the (signed) gate logits picks exactly the open gates
    n = pruned.n_circuit_edges
    assert torch.equal(topn_masks(pruned, [n], absolute=False, prune=False)[0], pruned.in_circuit)
    sel = pruned.provenance.selection
    assert sel.rule == "threshold" and torch.equal(pruned.in_circuit, pruned.scores >= sel.t)
    assert pruned.edge_names() == TracedModel(setup[0]).layout.edge_names()
    # the graph file keeps everything (scores, circuit, scoring record, the run's settings and trace)
    back = Graph.from_dict(json.loads(json.dumps(pruned.to_dict())))
    assert torch.equal(back.scores, pruned.scores) and torch.equal(back.in_circuit, pruned.in_circuit)
    assert back.provenance.scoring == sc
    assert back.provenance.extra["edge_pruning"] == pruned.provenance.extra["edge_pruning"]


def test_same_seed_same_result_other_seed_differs(setup, pruned):
    model, data = setup
    again = edge_pruning(model, data, target_edges=TARGET, seed=0, **FAST)
    assert torch.equal(again.scores, pruned.scores) and torch.equal(again.in_circuit, pruned.in_circuit)
    other = edge_pruning(model, data, target_edges=TARGET, seed=1, **FAST)
    assert not torch.equal(other.scores, pruned.scores)


def test_learned_circuit_beats_random_circuits_of_its_size(setup, pruned):
    """All gates start equal and the budget term treats every edge alike, so the spread of the
    learned logits comes from the KL gradient: the open gates must form a better circuit than
    random edge sets of the same size."""
    model, data = setup
    runner = PatchRunner(model, data, "kl_div")
    n, E = pruned.n_circuit_edges, pruned.n_edges
    g = torch.Generator().manual_seed(0)
    random_masks = torch.zeros(40, E)
    for i in range(40):
        random_masks[i, torch.randperm(E, generator=g)[:n]] = 1.0
    kl = runner.metric_values(torch.cat([pruned.in_circuit.float()[None], random_masks]))
    assert float(kl[0]) < float(torch.quantile(kl[1:], 0.1)), (float(kl[0]), kl[1:].tolist())


def test_early_stop_once_on_budget_and_plateaued(setup):
    model, data = setup
    E = TracedModel(model).layout.n_edges
    # budget = every edge, gates start open: on budget from the start, stops once the loss is flat
    g = edge_pruning(model, data, target_edges=E, steps=60, init=5.0)
    assert 30 <= g.provenance.extra["edge_pruning"]["steps_run"] < 60
    assert g.provenance.scoring.steps == g.provenance.extra["edge_pruning"]["steps_run"]
    g = edge_pruning(model, data, target_edges=E, steps=60, init=5.0, early_stop=False)
    assert g.provenance.extra["edge_pruning"]["steps_run"] == 60


def test_hard_concrete_gates():
    log_alpha = torch.tensor([-20.0, 0.0, 20.0])
    u = torch.full((3,), 0.5)
    z = hard_concrete_sample(log_alpha, u, 2 / 3, (-0.1, 1.1))
    assert z.tolist() == [0.0, pytest.approx(0.5), 1.0]  # exact zeros and ones after the stretch and clamp
    assert hard_concrete_mean(torch.tensor([0.0]), (-0.1, 1.1)).item() == pytest.approx(0.5)
    # P(z > 0) from the closed form matches sampling
    g = torch.Generator().manual_seed(0)
    la = torch.full((20000,), 0.3)
    samples = hard_concrete_sample(la, torch.rand(20000, generator=g), 2 / 3, (-0.1, 1.1))
    assert float((samples > 0).float().mean()) == pytest.approx(float(expected_l0(la, 2 / 3, (-0.1, 1.1))) / 20000,
                                                                abs=0.01)
    # the gates carry gradients to log alpha
    la = torch.zeros(4, requires_grad=True)
    hard_concrete_sample(la, torch.rand(4, generator=g), 2 / 3, (-0.1, 1.1)).sum().backward()
    assert la.grad is not None and bool((la.grad >= 0).all()) and float(la.grad.sum()) > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(target_edges=10_000), "target_edges must be an integer in"),
    (dict(target_edges=-1), "target_edges must be an integer in"),
    (dict(target_edges=2.5), "target_edges must be an integer in"),
    (dict(target_edges=10, steps=0), "steps must be a positive integer"),
    (dict(target_edges=10, lr=0.0), "lr must be a positive number"),
    (dict(target_edges=10, lambda_lr=-1.0), "lambda_lr must be a positive number"),
    (dict(target_edges=10, temperature=0.0), "temperature must be a positive number"),
    (dict(target_edges=10, stretch=(0.0, 1.1)), "stretch must be a pair"),
    (dict(target_edges=10, stretch=(-0.1, 1.0)), "stretch must be a pair"),
    (dict(target_edges=10, init=math.inf), "init"),
    (dict(target_edges=10, metric="accuracy"), "needs a differentiable metric"),
])
def test_bad_arguments(setup, kwargs, message):
    model, data = setup
    with pytest.raises(ValueError, match=message):
        edge_pruning(model, data, **kwargs)


def test_ranking_on_a_zoo_model_is_as_good_as_eap_ig():
    """On ioi-3l (262 edges), the learned gate logits rank edges well: the top-k circuit at the size
    eap-ig-inputs needs for f >= 0.9 also reaches f >= 0.9. (Before the one-sided budget and the
    task-metric loss it reached f ≈ 0.4 here: a collapsing budget ordered the pruned edges by noise.)"""
    import circuits
    from circuits import zoo
    from circuits.circuit.minimal import search_size

    model, tok = zoo.load("ioi-3l")
    task = circuits.load_task(zoo.MODELS["ioi-3l"].task, tok, n=32, seed=0, **zoo.task_options("ioi-3l"))
    runner = PatchRunner(model, task, batch_size=32)
    k = search_size(runner, circuits.attribute(model, task, method="eap-ig-inputs", steps=5, batch_size=32), 0.9).k
    E = runner.layout.n_edges
    learned = edge_pruning(model, task, target_edges=math.ceil(0.05 * E), steps=50, batch_size=32, seed=0)
    assert learned.provenance.scoring.metric == task.metric  # the loss is the metric faithfulness is measured with
    m_full, m_empty = runner.full_and_empty()
    m = float(runner.metric_values(topn_masks(learned, [k], absolute=False, prune=True))[0])
    f = (m - m_empty) / (m_full - m_empty)
    assert k < 0.5 * E and f >= 0.9, (k, E, f)


def test_progress_bar_shows_the_current_faithfulness(setup, pruned, capsys):
    """With progress, the bar shows f of the current deterministic mask (every F_EVERY steps and at the last
    step: the final circuit's f); evaluating it changes nothing in the optimisation."""
    model, data = setup
    shown = edge_pruning(model, data, target_edges=TARGET, seed=0, progress=True, **FAST)
    err = capsys.readouterr().err
    assert torch.equal(shown.scores, pruned.scores)  # same run with or without the bar
    runner = PatchRunner(model, data, "kl_div")
    m_full, m_empty = runner.full_and_empty()
    m = float(runner.metric_values(shown.in_circuit.float()[None])[0])
    assert f"f={(m - m_empty) / (m_full - m_empty):.3f}" in err  # the last step's f: the final circuit's
