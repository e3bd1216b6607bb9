"""circuits.compare: overlap (Jaccard, precision/recall), Spearman over shared edges, faithfulness of the
intersection and the union, the membership-coloured diagram, and its errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from scipy.stats import spearmanr
from test_attribution import make_batch
from tiny_models import tiny_model

import circuits
from circuits import TracedModel
from circuits.evaluation import compare, evaluate_circuit
from circuits.evaluation.compare import intersection, union
from circuits.models import graph_for
from circuits.render.compare import SHARED, SOME, UNIQUE, compare_dot, membership_colors

BASE = circuits.Graph.build(2, 2)


def circuit(names: list[str], scores: torch.Tensor | None = None) -> circuits.Graph:
    g = BASE if scores is None else BASE.with_scores(scores)
    return g.with_circuit(names)


A = ["input->a0.h0<q>", "a0.h0->m0", "m0->logits", "input->a1.h1<v>"]
B = ["input->a0.h0<q>", "a0.h0->m0", "input->logits"]


def test_overlap_and_reference():
    r = compare([circuit(A), circuit(B)], ["a", "b"], reference="a")
    assert r.n_edges == [4, 3]
    assert r.shared_edges[0][1] == 2 and r.edge_jaccard[0][1] == pytest.approx(2 / 5)
    assert r.edge_jaccard[0][0] == 1.0 and r.edge_jaccard[1][0] == r.edge_jaccard[0][1]
    # nodes: a = {input, a0.h0, m0, logits, a1.h1}, b = {input, a0.h0, m0, logits}
    assert r.n_nodes == [5, 4] and r.node_jaccard[0][1] == pytest.approx(4 / 5)
    assert r.precision == {"b": pytest.approx(2 / 3)} and r.recall == {"b": pytest.approx(2 / 4)}
    assert r.node_precision["b"] == 1.0 and r.node_recall["b"] == pytest.approx(4 / 5)
    assert r.n_intersection == 2 and r.n_union == 5
    assert "edge J" in r.table() and "against a" in r.table()
    assert r.to_dict()["format"] == "circuits.compare"


def test_spearman_over_shared_edges():
    g = torch.Generator().manual_seed(0)
    sa, sb = torch.randn(BASE.n_edges, generator=g), torch.randn(BASE.n_edges, generator=g)
    ca, cb = BASE.with_scores(sa).with_circuit(torch.arange(BASE.n_edges) < 30), \
        BASE.with_scores(sb).with_circuit(torch.arange(BASE.n_edges) >= 10)
    r = compare([ca, cb])
    shared = torch.arange(10, 30)
    assert r.spearman[0][1] == pytest.approx(spearmanr(sa[shared], sb[shared]).statistic)
    r2 = compare([circuit(A), circuit(B)])  # two shared edges: too few to rank
    assert r2.spearman[0][1] is None


def test_intersection_and_union_are_new_graphs():
    a, b = circuit(A), circuit(B)
    assert sorted(intersection([a, b]).circuit_edges()) == sorted(set(A) & set(B))
    assert sorted(union([a, b]).circuit_edges()) == sorted(set(A) | set(B))
    assert a.circuit_edges() == circuit(A).circuit_edges()  # unchanged


def test_faithfulness_of_intersection_and_union():
    tm = TracedModel(tiny_model("gpt2"))
    g = graph_for(tm.model)
    s = g.with_scores(torch.randn(g.n_edges, generator=torch.Generator().manual_seed(1)))
    a, b = circuits.prune.topn(s, 40), circuits.prune.topn(s, 40, absolute=False)
    batch = make_batch()
    r = compare([a, b], model=tm, data=[batch], metric="logit_diff")
    expected = evaluate_circuit(tm, intersection([a, b]), [batch], "logit_diff").faithfulness
    assert r.faithfulness["intersection"] == pytest.approx(expected, abs=1e-5)
    expected = evaluate_circuit(tm, union([a, b]), [batch], "logit_diff").faithfulness
    assert r.faithfulness["union"] == pytest.approx(expected, abs=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="at least 2"):
        compare([circuit(A)])
    with pytest.raises(ValueError, match="3 layers x 2 heads"):
        compare([circuit(A), circuits.Graph.build(3, 2)], ["a", "wide"])


def test_membership_colours():
    c = circuit(["input->logits"])
    colors, legend = membership_colors([circuit(A), circuit(B), c], ["a", "b", "c"])
    assert colors["input->a0.h0<q>"] == SOME and colors["m0->logits"] == UNIQUE[0]
    assert colors["input->logits"] == SOME and colors["input->a1.h1<v>"] == UNIQUE[0]
    assert [m for _, m in legend] == ["in all 3 circuits", "only in a", "only in b", "only in c", "in some, not all"]
    colors, _ = membership_colors([circuit(A), circuit(B)], ["a", "b"])
    assert colors["a0.h0->m0"] == SHARED and colors["input->logits"] == UNIQUE[1]
    src = compare_dot([circuit(A), circuit(B)], ["a", "b"]).source
    assert UNIQUE[1] in src and SHARED in src and "only in b" in src


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_diagram_file(tmp_path):
    from circuits.render.compare import render_compare

    p = render_compare([circuit(A), circuit(B)], ["a", "b"], tmp_path / "c.svg")
    assert p.read_text().lstrip().startswith("<?xml") and UNIQUE[0] in p.read_text()
