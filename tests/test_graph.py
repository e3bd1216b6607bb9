import json

import networkx as nx
import pytest
import torch
from transformers import AutoConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

from circuits import Graph, graph_for
from circuits.graph import Provenance, Scoring, Selection, expected_edge_count


@pytest.mark.parametrize(
    "config,edges",
    [
        (GPT2Config(), 32491),  # GPT-2 small
        (Qwen2Config(num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, hidden_size=896), 179749),
        (LlamaConfig(num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, hidden_size=4096), 1592881),
    ],
)
def test_edge_counts_match_reference(config, edges):
    g = graph_for(config)
    assert g.n_edges == edges == expected_edge_count(g.n_layers, g.n_heads)


def closed_form_edges(L: int, H: int, parallel: bool) -> int:
    """docs/concepts.md: E = (3H+1)(H+1)·L(L-1)/2 + L(5H+2) + 1, or L(4H+2) for parallel blocks."""
    return (3 * H + 1) * (H + 1) * L * (L - 1) // 2 + L * ((4 if parallel else 5) * H + 2) + 1


def _new_family_configs():
    from transformers import GPTJConfig, MixtralConfig, OlmoeConfig, Phi3Config, Qwen2MoeConfig

    llama8b = dict(num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, hidden_size=4096)
    qwen05b = dict(num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, hidden_size=896)
    return [
        (Phi3Config(**llama8b), 1592881, False),   # the MIB counts at the Llama-3.1-8B shape ...
        (MixtralConfig(**llama8b), 1592881, False),
        (Qwen2MoeConfig(**qwen05b), 179749, False),  # ... and at the Qwen2.5-0.5B shape
        (OlmoeConfig(num_hidden_layers=16, num_attention_heads=16, hidden_size=2048), 101273, False),  # OLMoE-1B-7B
        (GPTJConfig(n_layer=28, n_head=16, n_embd=4096, rotary_dim=64), 316723, True),  # GPT-J-6B, parallel
    ]


@pytest.mark.parametrize("config,edges,parallel", _new_family_configs(), ids=lambda v: getattr(v, "model_type", ""))
def test_edge_counts_of_new_families(config, edges, parallel):
    """Edge counts from configs alone (no weights), equal to the MIB counts at the same shapes and to the
    closed form of docs/concepts.md."""
    g = graph_for(config)
    assert g.parallel_attn_mlp is parallel
    assert g.n_edges == edges == closed_form_edges(g.n_layers, g.n_heads, parallel)
    assert g.n_edges == expected_edge_count(g.n_layers, g.n_heads, parallel_attn_mlp=parallel)


def test_gpt2_small_nodes_and_names():
    g = graph_for(GPT2Config())
    assert g.n_nodes == 158
    names = g.edge_names()
    assert "a0.h1->a1.h2<k>" in names and "input->m0" in names and "m11->logits" in names
    assert "a0.h0->m0" in names  # sequential: MLP reads its own layer's heads
    assert len(set(names)) == g.n_edges


def test_parallel_residual_count_and_edges():
    g = graph_for(GPTNeoXConfig(num_hidden_layers=6, num_attention_heads=8, hidden_size=64, use_parallel_residual=True))
    assert g.parallel_attn_mlp
    assert g.n_edges == expected_edge_count(6, 8, parallel_attn_mlp=True)
    assert g.n_edges == expected_edge_count(6, 8) - 6 * 8  # no head -> same-layer MLP edges
    with pytest.raises(ValueError, match="not edges"):
        g.edge_index("a0.h0->m0")


def test_topological_order_and_validity():
    g = Graph.build(3, 2)
    # every edge goes from an earlier sender to a later receiver: times strictly increase
    assert bool((g.layout.sender_time[g.edge_sender] < g.layout.receiver_time[g.edge_receiver]).all())
    assert g.senders[0] == "input" and g.nodes[-1] == "logits"
    assert (g.layout.sender_time[1:] >= g.layout.sender_time[:-1]).all()


def test_edge_index_roundtrip_and_errors():
    g = Graph.build(2, 3)
    names = g.edge_names()
    idx = g.edge_index(names)
    assert torch.equal(idx, torch.arange(g.n_edges))
    with pytest.raises(ValueError, match="unknown sender"):
        g.edge_index("a9.h0->logits")
    with pytest.raises(ValueError, match="unknown receiver"):
        g.edge_index("input->a0.h0<x>")
    with pytest.raises(ValueError, match="shape"):
        g.layout.keep_mask(torch.ones(g.n_edges + 1))


def test_dense_roundtrip():
    g = Graph.build(2, 2)
    v = torch.randn(g.n_edges)
    lay = g.layout
    assert torch.equal(lay.from_dense(lay.to_dense(v)), v)
    assert lay.to_dense(v)[~g.valid].abs().sum() == 0
    W = lay.patch_weights(torch.stack([v, 1 - v]))  # the only keep-mask -> patch-weight conversion
    assert W.shape == (2, g.n_senders, g.n_receivers) and W[:, ~g.valid].abs().sum() == 0
    assert torch.allclose(lay.from_dense(W[0]), 1 - v) and torch.allclose(lay.from_dense(W[1]), v)


def test_json_roundtrip(tmp_path):
    g = Graph.build(2, 2, provenance=Provenance(model="tiny"))
    g = g.with_scores(torch.randn(g.n_edges), scoring=Scoring(method="eap", metric="logit_diff", n_examples=3))
    g = g.with_circuit(torch.rand(g.n_edges) > 0.5, Selection(rule="topn", n=7))
    path = g.save_json(tmp_path / "sub" / "g.json")
    g2 = Graph.load_json(path)
    assert torch.equal(g.scores, g2.scores) and torch.equal(g.in_circuit, g2.in_circuit)
    assert g2.provenance == g.provenance and g2.provenance.scoring.method == "eap"
    assert json.dumps(g.to_dict()) == json.dumps(g2.to_dict())
    d = g.to_dict()
    d["format"] = "other"
    with pytest.raises(ValueError, match="not a circuits graph"):
        Graph.from_dict(d)


def test_networkx_roundtrip():
    g = Graph.build(2, 2)
    g = g.with_scores(torch.randn(g.n_edges)).with_circuit(torch.rand(g.n_edges) > 0.3)
    nxg = g.to_networkx()
    assert isinstance(nxg, nx.MultiDiGraph) and nxg.number_of_edges() == g.n_edges
    g2 = Graph.from_networkx(nxg)
    assert torch.equal(g.scores, g2.scores) and torch.equal(g.in_circuit, g2.in_circuit)
    sub = g.to_networkx(circuit_only=True)
    assert sub.number_of_edges() == g.n_circuit_edges


def test_node_view():
    g = Graph.build(2, 2)
    m = g.node_mask_to_edge_mask(["input", "a0.h1"])
    kept = set(g.edge_names(m.nonzero().flatten()))
    assert all(n.startswith(("input->", "a0.h1->")) for n in kept)
    assert len(kept) == int((g.edge_sender == 0).sum() + (g.edge_sender == 2).sum())
    g = g.with_scores(torch.ones(g.n_edges))
    assert g.node_scores()[0] == (g.edge_sender == 0).sum()


def test_meta_device_config_only():
    with torch.device("meta"):
        cfg = AutoConfig.for_model("gpt2", n_layer=12, n_head=12)
    assert graph_for(cfg).n_edges == 32491
