"""EAP-IG / MIB graph files: read, write, round trip on GPT-2 small's shape, EAP-IG's edge order, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config

import circuits
from circuits.models import graph_for
from circuits.render.mib import edge_order, from_mib_dict, is_mib, load_mib, save_mib, to_mib_dict


def eap_ig_edge_names(n_layers: int, n_heads: int, parallel: bool) -> list[str]:
    """Edge names in the order of EAP-IG's Graph.from_model (its loops, written out here independently)."""
    names, stream = [], ["input"]
    for layer in range(n_layers):
        heads, mlp = [f"a{layer}.h{h}" for h in range(n_heads)], f"m{layer}"
        if parallel:
            for s in stream:
                names += [f"{s}->{a}<{c}>" for a in heads for c in "qkv"] + [f"{s}->{mlp}"]
            stream += heads + [mlp]
        else:
            names += [f"{s}->{a}<{c}>" for s in stream for a in heads for c in "qkv"]
            stream += heads
            names += [f"{s}->{mlp}" for s in stream]
            stream.append(mlp)
    return names + [f"{s}->logits" for s in stream]


@pytest.fixture(scope="module")
def gpt2_scored():
    g = graph_for(GPT2Config())  # GPT-2 small's shape, no weights
    scores = torch.randn(g.n_edges, generator=torch.Generator().manual_seed(0))
    return circuits.prune.topn(g.with_scores(scores), 500)


def test_gpt2_small_round_trip(tmp_path, gpt2_scored):
    g = gpt2_scored
    assert g.n_edges == 32491  # MIB's GPT-2 files list this many edges
    path = save_mib(g, tmp_path / "importances.json", d_model=768)
    d = json.loads(path.read_text())
    assert d["cfg"] == {"n_layers": 12, "n_heads": 12, "parallel_attn_mlp": False, "d_model": 768}
    assert len(d["edges"]) == 32491 and len(d["nodes"]) == 158
    assert sum(e["in_graph"] for e in d["edges"].values()) == g.n_circuit_edges
    back = circuits.load(path)  # recognised by its keys
    assert back.layout.shape == g.layout.shape
    assert torch.equal(back.in_circuit, g.in_circuit)
    assert torch.allclose(back.scores, g.scores)
    assert back.provenance.extra["d_model"] == 768
    assert to_mib_dict(back) == d  # d_model kept: reading and writing back gives the same file


@pytest.mark.parametrize("shape", [(12, 12, False), (3, 2, True)])
def test_edge_order_is_eap_igs(shape):
    g = circuits.Graph.build(*shape)
    assert g.edge_names(edge_order(g.layout)) == eap_ig_edge_names(*shape)


def test_nodes_follow_the_circuit():
    g = circuits.Graph.build(2, 2).with_circuit(["input->a1.h0<v>", "a1.h0->logits"])
    nodes = to_mib_dict(g, d_model=8)["nodes"]
    assert [n for n, v in nodes.items() if v["in_graph"]] == ["input", "a1.h0", "logits"]
    assert list(nodes) == g.nodes


def test_partial_file_and_missing_scores():
    d = {"cfg": {"n_layers": 1, "n_heads": 1}, "nodes": {},
         "edges": {"input->m0": {"in_graph": True}, "m0->logits": {"score": 2.0, "in_graph": True}}}
    g = from_mib_dict(d)
    assert g.n_circuit_edges == 2 and g.n_edges == 8
    assert torch.isnan(g.scores[g.edge_index("input->m0")]).all()
    assert float(g.scores[g.edge_index("m0->logits")]) == 2.0
    assert to_mib_dict(g, d_model=4)["edges"]["input->m0"]["score"] is None


def test_detection():
    assert is_mib({"cfg": {}, "nodes": {}, "edges": {}})
    assert not is_mib(circuits.Graph.build(1, 1).to_dict())  # our own schema has a list of edges


@pytest.mark.parametrize("change, needle", [
    (lambda d: d["nodes"]["a0.h0"].update(neurons=[True] * 4), "neuron-level"),
    (lambda d: d.update(neurons_scores=[]), "neuron-level"),
    (lambda d: d["cfg"].update(n_heads=0), "cfg.n_heads"),
    (lambda d: d["cfg"].update(parallel_attn_mlp="no"), "parallel_attn_mlp"),
    (lambda d: d["edges"].update({"a5.h0->logits": {"score": 1.0, "in_graph": True}}), "do not fit its cfg"),
    (lambda d: d["edges"]["input->m0"].pop("in_graph"), "boolean in_graph"),
    (lambda d: d["edges"]["input->m0"].update(score="high"), "not a number"),
])
def test_bad_files(change, needle):
    d = to_mib_dict(circuits.Graph.build(2, 1), d_model=4)
    change(d)
    with pytest.raises(ValueError, match=needle):
        from_mib_dict(d)


def test_writer_needs_d_model(tmp_path):
    with pytest.raises(ValueError, match="d_model"):
        save_mib(circuits.Graph.build(1, 1), tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_load_mib(tmp_path):
    p = save_mib(circuits.Graph.build(1, 2), tmp_path / "g.json", d_model=4)
    assert load_mib(p).n_edges == circuits.Graph.build(1, 2).n_edges
