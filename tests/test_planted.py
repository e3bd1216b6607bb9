"""Planted-circuit models: they load, trace, and their ground truth holds under exact patching."""

from __future__ import annotations

import pytest
import torch

from circuits.graph import Graph
from circuits.models import graph_for
from circuits.patching import PatchRunner, exact_edge_effects
from circuits.runtime import TracedModel
from circuits.scores import attribute
from circuits.zoo.planted import PLANTED, ground_truth, load_planted, planted_task, task_spec

NAMES = sorted(PLANTED)
N = 16


@pytest.fixture(scope="module", params=NAMES)
def planted(request):
    name = request.param
    model, tok = load_planted(name)
    task = planted_task(name, n=N, seed=0)
    tm = TracedModel(model)
    runner = PatchRunner(tm, task, "logit_diff", batch_size=N)
    return name, model, tok, task, tm, runner


def test_registry_lists_shipped_folders():
    assert len(NAMES) >= 2
    for name in NAMES:
        info = PLANTED[name]
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "ground_truth.json", "task.json"):
            assert (info.path / f).exists(), f"{name}: missing {f}"
        assert (info.path / "model.safetensors").stat().st_size < 1_000_000
    with pytest.raises(ValueError, match="unknown planted model"):
        load_planted("no_such_model")


def test_loads_with_standard_classes_and_tokenizer(planted):
    name, model, tok, task, tm, _ = planted
    assert model.config.model_type == PLANTED[name].family
    assert type(model).__module__.startswith("transformers.")
    vocab = tok.get_vocab()
    ids = tok("<bos> t0 t5", add_special_tokens=False)["input_ids"]
    assert ids == [vocab["<bos>"], vocab["t0"], vocab["t5"]]
    assert tok.pad_token_id == task_spec(name)["pad_id"]
    assert tok.decode(task.clean_ids[0]).split()[0] == "<bos>"


def test_traced_forward_matches_transformers(planted):
    _, model, _, task, tm, _ = planted
    b = task.batch()
    with torch.no_grad():
        hf = model(b.clean).logits
        tr = tm.run(b.clean).logits
    assert torch.allclose(hf, tr, atol=1e-2, rtol=0)
    pred = hf[:, -1].argmax(-1)
    assert bool((pred == b.answers[:, 0]).all()), "the planted model must solve its task on clean prompts"


def test_task_generation(planted):
    name, _, _, task, _, _ = planted
    spec = task_spec(name)
    again = planted_task(name, n=N, seed=0)
    assert again.clean_ids == task.clean_ids and again.corrupted_ids == task.corrupted_ids
    assert planted_task(name, n=N, seed=1).clean_ids != task.clean_ids
    for c, k, a, w in zip(task.clean_ids, task.corrupted_ids, task.answers, task.wrong):
        assert len(c) == len(k) == spec["seq_len"] and c[0] == spec["bos_id"]
        assert a != w
        if spec["kind"] == "marker_copy":
            assert c.count(spec["marker_id"]) == 1
            assert a == [c[c.index(spec["marker_id"]) + 1]]
            assert c.index(spec["marker_id"]) != k.index(spec["marker_id"])
        else:
            first = c.index(c[-1])
            assert first < len(c) - 1 and a == [c[first + 1]]
            assert c[-1] != k[-1]


def test_ground_truth_is_a_valid_graph(planted):
    name, model, _, _, tm, _ = planted
    gt = ground_truth(name)
    assert isinstance(gt, Graph)
    assert gt.edge_names() == graph_for(model).edge_names() == tm.layout.edge_names()
    edges = gt.circuit_edges()
    assert 4 <= len(edges) <= 10
    assert set(edges) == set(gt.provenance.extra["edges"]), "meta['edges'] must describe exactly the circuit"
    assert gt.provenance.extra["description"]
    assert gt.edge_index(edges).numel() == len(edges)  # names parse and are edges of this graph
    assert any(e.endswith(("<q>", "<k>")) for e in edges), "each planted circuit has a q/k edge"


@pytest.fixture(scope="module")
def patched(planted):
    """One batched patching pass per model: full, empty, circuit, complement, and each true edge removed."""
    name, _, _, _, _, runner = planted
    gt = ground_truth(name)
    E = gt.n_edges
    keep = gt.in_circuit.float()
    idx = gt.in_circuit.nonzero().flatten()
    singles = torch.ones(len(idx), E)
    singles[torch.arange(len(idx)), idx] = 0.0
    vals = runner.metric_values(torch.cat([torch.stack([torch.ones(E), torch.zeros(E), keep, 1 - keep]), singles]))
    return name, gt, vals


def test_circuit_is_faithful_and_complement_is_not(patched):
    name, gt, vals = patched
    full, empty, circ, comp = vals[:4].tolist()
    assert full - empty > 5.0
    f_circ = (circ - empty) / (full - empty)
    f_comp = (comp - empty) / (full - empty)
    assert f_circ >= 0.95, f"{name}: f(circuit) = {f_circ}"
    assert abs(f_comp) <= 0.05, f"{name}: f(complement) = {f_comp}"


def test_every_true_edge_matters(patched):
    name, gt, vals = patched
    full, empty = float(vals[0]), float(vals[1])
    effects = full - vals[4:]  # m(N) - m(N without e), one per true edge
    assert bool((effects > 0.25 * (full - empty)).all()), f"{name}: weak true edges {effects.tolist()}"


def test_exact_edge_effects_agree_with_the_batched_pass(planted, patched):
    name, gt, vals = patched
    runner = planted[-1]
    eff = exact_edge_effects(None, None, edges=gt.in_circuit, runner=runner)
    assert torch.allclose(eff[gt.in_circuit], vals[0] - vals[4:], atol=1e-3)


def test_saturated_qk_edges_defeat_plain_eap(planted, patched):
    """The q/k edges of the planted circuit enter saturated heads: EAP's gradient there is
    almost zero while IG recovers a score of the right order."""
    name, _, _, task, tm, _ = planted
    _, gt, vals = patched
    circuit = gt.circuit_edges()
    pos = [i for i, e in enumerate(circuit) if e.endswith(("<q>", "<k>"))]
    idx = gt.edge_index([circuit[i] for i in pos])
    eff = (vals[0] - vals[4:])[pos]
    small = task.subset(16)
    eap = attribute(tm, small, "logit_diff", "eap", batch_size=16).scores[idx]
    ig = attribute(tm, small, "logit_diff", "eap-ig-inputs", steps=5, batch_size=16).scores[idx]
    assert bool((eap.abs() < 0.01 * eff).all()), f"{name}: EAP {eap.tolist()} vs exact {eff.tolist()}"
    assert bool((ig > 0.1 * eff).all()), f"{name}: IG {ig.tolist()} vs exact {eff.tolist()}"


@pytest.mark.parametrize("name", NAMES)
def test_builder_reproduces_the_shipped_folder(name, tmp_path):
    """The shipped files are what ``python -m circuits.zoo.planted.build_<name> --out DIR`` writes."""
    import importlib
    import json

    from safetensors.torch import load_file

    builder = importlib.import_module(PLANTED[name].builder)
    builder.main(["--out", str(tmp_path)])
    shipped = PLANTED[name].path
    new, old = load_file(str(tmp_path / "model.safetensors")), load_file(str(shipped / "model.safetensors"))
    assert new.keys() == old.keys()
    for k in new:
        assert torch.allclose(new[k], old[k], atol=1e-5, rtol=0), k
    for f in ("ground_truth.json", "task.json", "config.json"):
        a, b = (json.loads((p / f).read_text()) for p in (tmp_path, shipped))
        if f == "config.json":
            a.pop("transformers_version", None), b.pop("transformers_version", None)
        assert a == b, f
    assert (tmp_path / "tokenizer.json").read_text() == (shipped / "tokenizer.json").read_text()
