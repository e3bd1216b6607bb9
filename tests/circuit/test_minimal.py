"""Minimal faithful circuits: size search over top-k circuits and exact refinement to a 1-minimal circuit."""

from __future__ import annotations

import pytest
import torch
from tiny_models import VOCAB, random_batch, sensitive_llama

from circuits.circuit.minimal import Refinement, SizeSearch, refine, search_size
from circuits.circuit.prune import topn, topn_masks
from circuits.graph import Graph
from circuits.models import graph_for
from circuits.patching import PatchRunner
from circuits.runtime import TracedModel
from circuits.scores import attribute
from circuits.tasks.base import Batch
from circuits.zoo.planted import ground_truth, load_planted, planted_task

TARGET = 0.8


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one thread (see tiny_models.one_thread)."""


def make_batch(B: int = 8, P: int = 6, seed: int = 1, same: bool = False) -> Batch:
    clean, corr, mask = random_batch(B=B, P=P, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    return Batch(clean=clean, corrupted=clean.clone() if same else corr, attention_mask=mask,
                 answers=torch.randint(0, VOCAB, (B, 1), generator=g),
                 wrong=torch.randint(0, VOCAB, (B, 1), generator=g), answer_pos=torch.full((B,), P - 1))


def faith(runner: PatchRunner, masks: torch.Tensor) -> torch.Tensor:
    """Independent f of keep-masks: one plain runner.evaluate and the definition."""
    m_full, m_empty = runner.full_and_empty()
    m = runner.evaluate(masks.float().reshape(-1, runner.layout.n_edges))["m"]
    return (m - m_empty) / (m_full - m_empty)


def minus_each(keep: torch.Tensor) -> torch.Tensor:
    idx = keep.nonzero().flatten()
    masks = keep.repeat(len(idx), 1)
    masks[torch.arange(len(idx)), idx] = False
    return masks


@pytest.fixture(scope="module")
def tiny():
    tm = TracedModel(sensitive_llama())
    batch = make_batch()
    runner = PatchRunner(tm, [batch], "kl_div")
    scores = attribute(tm, [batch], "kl_div", "eap-ig-inputs", steps=3)
    return tm, batch, runner, scores


@pytest.fixture(scope="module")
def searched(tiny):
    _, _, runner, scores = tiny
    calls = []
    evaluate = runner.evaluate

    def counting(masks, *a, **kw):
        calls.append(len(masks) if masks.dim() == 2 else 1)
        return evaluate(masks, *a, **kw)

    runner.evaluate = counting
    try:
        found = search_size(runner, scores, TARGET)
    finally:
        del runner.evaluate
    return found, calls


# ------------------------------------------------------------------------------------------ search_size
def test_search_size_meets_target_and_every_smaller_probe_failed(tiny, searched):
    _, _, runner, scores = tiny
    found, _ = searched
    assert isinstance(found, SizeSearch) and found.target == TARGET
    assert found.target_met and found.faithfulness >= TARGET
    sel = found.circuit.provenance.selection
    assert sel.rule == "faithfulness" and sel.n == found.k and sel.t == TARGET
    assert found.circuit.provenance.faithfulness == found.faithfulness
    # the circuit is exactly the pruned top-k circuit, and its f holds on an independent evaluation
    assert torch.equal(found.circuit.in_circuit, topn(scores, found.k).in_circuit)
    assert float(faith(runner, found.circuit.in_circuit)[0]) == pytest.approx(found.faithfulness, abs=1e-6)
    assert torch.equal(found.circuit.scores, scores.scores)
    ks = [k for k, _, _ in found.probes]
    assert len(ks) == len(set(ks)) and found.k in ks
    assert all(f < TARGET for k, _, f in found.probes if k < found.k), found.probes
    # the galloping sequence ran up to the first passing power of two, and bisection closed the gap
    assert {1, 2, 4} <= set(ks)
    below, above = max([0] + [k for k in ks if k < found.k]), found.k
    assert above - below == 1, f"bisection left a gap between {below} and {above}: {found.probes}"
    # every probe: edges after pruning <= k, and f matches the recorded number
    recheck = faith(runner, topn_masks(scores, ks))
    for (k, n, f), g in zip(found.probes, recheck.tolist()):
        assert n <= k and g == pytest.approx(f, abs=1e-6)
    assert found.m_full == pytest.approx(0.0, abs=1e-6) and found.m_empty > 0.5  # KL: full = 0


def test_search_size_batches_each_round(searched):
    found, calls = searched
    probe_calls = calls[1:]  # the first call is full_and_empty
    assert sum(probe_calls) == len(found.probes)
    assert len(probe_calls) < len(found.probes), "probes of a round must go through one batched evaluate"
    assert probe_calls[0] == 4  # k = 1, 2, 4, 8 in the first galloping round


def test_search_size_unreachable_target_returns_best_probe(tiny):
    _, _, runner, scores = tiny
    found = search_size(runner, scores, 1.2)  # KL faithfulness never exceeds 1
    assert not found.target_met
    best = max(f for _, _, f in found.probes)
    assert found.faithfulness == best
    assert any(k == scores.n_edges for k, _, _ in found.probes)  # galloping reached the full graph
    assert found.faithfulness == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------------------ refine
def check_one_minimal(runner: PatchRunner, ref: Refinement, target: float) -> None:
    """The refined circuit meets the target and every single removal drops below it (independent evaluate)."""
    keep = ref.circuit.in_circuit
    assert keep.any()
    f_c = float(faith(runner, keep)[0])
    assert f_c >= target and f_c == pytest.approx(ref.faithfulness, abs=1e-6)
    f_minus = faith(runner, minus_each(keep))
    assert bool((f_minus < target).all()), f"removable edges left: {f_minus.tolist()}"
    names = ref.circuit.circuit_edges()
    assert list(ref.per_edge_removal_f) == names
    assert torch.allclose(torch.tensor([ref.per_edge_removal_f[n] for n in names], dtype=torch.float64),
                          f_minus.double(), atol=1e-6)
    assert ref.n_inert == sum(abs(v - ref.faithfulness) < 0.01 for v in ref.per_edge_removal_f.values())
    assert ref.target_met and ref.converged and ref.is_1_minimal
    sel = ref.circuit.provenance.selection
    assert sel.rule == "faithfulness" and sel.n == int(keep.sum())


def test_refine_search_result_is_1_minimal(tiny, searched):
    _, _, runner, scores = tiny
    found, _ = searched
    ref = refine(runner, found.circuit, TARGET)
    check_one_minimal(runner, ref, TARGET)
    assert ref.circuit.n_circuit_edges <= found.circuit.n_circuit_edges
    assert torch.equal(ref.circuit.scores, scores.scores)


def test_refine_grows_a_circuit_below_the_target(tiny, searched):
    _, _, runner, scores = tiny
    found, _ = searched
    k_fail = max(k for k, _, f in found.probes if f < TARGET and k < found.k)
    start = topn(scores, k_fail)
    assert float(faith(runner, start.in_circuit)[0]) < TARGET
    ref = refine(runner, start, TARGET)
    check_one_minimal(runner, ref, TARGET)


def test_refine_from_an_empty_circuit(tiny):
    """No single edge helps an empty circuit (every path needs two edges or more): refine restarts
    from the full graph and still ends 1-minimal."""
    _, _, runner, scores = tiny
    empty = scores.with_circuit(torch.zeros(scores.n_edges, dtype=torch.bool))
    ref = refine(runner, empty, TARGET)
    check_one_minimal(runner, ref, TARGET)


# ------------------------------------------------------------------------------------------ planted ground truth
@pytest.fixture(scope="module", params=["marker_copy", "rope_induction"])
def planted(request):
    name = request.param
    model, _ = load_planted(name)
    tm = TracedModel(model)
    train, test = planted_task(name, n=32, seed=0).split(0.5, seed=0)
    scores = attribute(tm, train, method="eap-ig-inputs", batch_size=16)
    runner = PatchRunner(tm, test, batch_size=16)
    return tm, scores, runner, set(ground_truth(name).circuit_edges())


def test_planted_search_and_refine_recover_the_ground_truth(planted):
    _, scores, runner, truth = planted
    found = search_size(runner, scores, 0.95)
    assert found.target_met
    ref = refine(runner, found.circuit, 0.95)
    assert set(ref.circuit.circuit_edges()) == truth
    assert ref.is_1_minimal and ref.faithfulness >= 0.95
    # every true edge is necessary (its removal costs far more than the 5% slack)
    assert max(ref.per_edge_removal_f.values()) < 0.9


def test_planted_refine_from_the_full_graph_recovers_the_ground_truth(planted):
    tm, _, runner, truth = planted
    ref = refine(runner, graph_for(tm.model), 0.95)
    assert set(ref.circuit.circuit_edges()) == truth and ref.is_1_minimal


# ------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("target", [0.0, -0.5, 1.51, float("nan")])
def test_bad_target(tiny, target):
    _, _, runner, scores = tiny
    with pytest.raises(ValueError, match="target faithfulness must be in"):
        search_size(runner, scores, target)
    with pytest.raises(ValueError, match="target faithfulness must be in"):
        refine(runner, scores, target)


def test_too_few_examples(tiny):
    tm, _, _, scores = tiny
    runner = PatchRunner(tm, [make_batch(B=4)], "kl_div")
    with pytest.raises(ValueError, match="at least 8"):
        search_size(runner, scores, TARGET)
    with pytest.raises(ValueError, match="at least 8"):
        refine(runner, scores, TARGET)


def test_undefined_faithfulness(tiny):
    tm, _, _, scores = tiny
    runner = PatchRunner(tm, [make_batch(same=True)], "kl_div")  # corrupted == clean: m(N) = m(∅) = 0
    with pytest.raises(ValueError, match=r"faithfulness is undefined.*m\(N\).*m\(∅\).*divide by ~0"):
        search_size(runner, scores, TARGET)
    with pytest.raises(ValueError, match="faithfulness is undefined"):
        refine(runner, scores, TARGET)


def test_graph_of_another_model(tiny):
    _, _, runner, _ = tiny
    other = Graph.build(3, 2)
    with pytest.raises(ValueError, match="does not match"):
        search_size(runner, other, TARGET)
    with pytest.raises(ValueError, match="does not match"):
        refine(runner, other, TARGET)
