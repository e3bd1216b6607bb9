"""Export / load: JSON, GraphML, GEXF, CSV round trips, dot source, errors, no-`dot` operation."""

from __future__ import annotations

import csv
import json
import math
import shutil

import networkx as nx
import pytest
import torch

from circuits.graph import Graph, Provenance, Scoring, Selection
from circuits.render import export as X


def scored_graph(parallel: bool = False) -> Graph:
    prov = Provenance(model="gpt2", task="ioi", extra={"nested": {"k": [1, 2]}})
    g = Graph.build(2, 3, parallel_attn_mlp=parallel, provenance=prov)
    scores = torch.randn(g.n_edges, generator=torch.Generator().manual_seed(0))
    scores[5] = float("nan")
    g = g.with_scores(scores, scoring=Scoring(method="eap", metric="logit_diff"))
    return g.with_circuit(scores.abs() > 1.0, Selection(rule="threshold", t=1.0)).with_provenance(faithfulness=0.9)


def assert_same(a: Graph, b: Graph, circuit_only: bool = False) -> None:
    assert (a.n_layers, a.n_heads, a.parallel_attn_mlp) == (b.n_layers, b.n_heads, b.parallel_attn_mlp)
    assert a.provenance == b.provenance
    assert torch.equal(a.in_circuit, b.in_circuit)
    if circuit_only:
        assert torch.equal(a.scores[a.in_circuit], b.scores[b.in_circuit])
        assert bool((b.scores[~b.in_circuit] == 0).all())
    else:
        assert torch.equal(torch.isnan(a.scores), torch.isnan(b.scores))
        assert torch.equal(torch.nan_to_num(a.scores), torch.nan_to_num(b.scores))  # bit-exact


def test_json_round_trip_identical(tmp_path):
    g = scored_graph()
    p = X.save(g, tmp_path / "c.json")
    h = X.load(p)
    assert_same(g, h)
    X.save(h, tmp_path / "d.json")
    assert (tmp_path / "c.json").read_text() == (tmp_path / "d.json").read_text()
    assert json.loads(p.read_text())["format"] == "circuits.graph"
    assert Graph.load_json(p).to_dict() == g.to_dict()  # same schema as Graph.save_json


@pytest.mark.parametrize("fmt", ["graphml", "gexf", "csv"])
@pytest.mark.parametrize("circuit_only", [False, True])
@pytest.mark.parametrize("parallel", [False, True])
def test_round_trips(tmp_path, fmt, circuit_only, parallel):
    g = scored_graph(parallel)
    g.scores[7] = float("-inf")  # JSON stores non-finite scores as null; these formats keep them
    p = X.save(g, tmp_path / f"c.{fmt}", circuit_only=circuit_only)
    assert_same(g, X.load(p), circuit_only)


def test_graphml_readable_by_networkx(tmp_path):
    g = scored_graph()
    p = X.save(g, tmp_path / "c.graphml")
    h = nx.read_graphml(p)
    assert h.graph["n_layers"] == 2 and h.graph["n_heads"] == 3 and h.graph["parallel_attn_mlp"] is False
    assert json.loads(h.graph["meta"]) == g.provenance.to_dict()
    got = {d["name"]: (d["score"], d["in_circuit"], d["input"]) for _, _, d in h.edges(data=True)}
    names, scores = g.edge_names(), g.scores.tolist()
    assert set(got) == set(names)
    for n, s, f in zip(names, scores, g.in_circuit.tolist()):
        gs, gf, _ = got[n]
        assert (math.isnan(s) and math.isnan(gs)) or gs == s
        assert gf is f
    assert got["a0.h1->a1.h2<k>"][2] == "k"
    assert h.nodes["a1.h2"]["kind"] == "head" and h.nodes["a1.h2"]["layer"] == 1
    text = p.read_text()  # spec spellings for other GraphML readers
    assert ">true</data>" in text and ">True</data>" not in text and ">NaN</data>" in text


def test_gexf_readable_by_networkx(tmp_path):
    g = scored_graph()
    p = X.save(g, tmp_path / "c.gexf", circuit_only=True)
    h = nx.read_gexf(p)
    assert {d["name"] for _, _, d in h.edges(data=True)} == set(g.circuit_edges())
    assert "<description>" in p.read_text()


def test_csv_columns(tmp_path):
    g = scored_graph()
    p = X.save(g, tmp_path / "c.csv")
    lines = p.read_text().splitlines()
    assert lines[0].startswith("# circuits.graph {")
    rows = list(csv.DictReader(lines[1:]))
    assert tuple(rows[0]) == X.CSV_COLUMNS and len(rows) == g.n_edges
    row = next(r for r in rows if r["edge"] == "a0.h1->a1.h2<k>")
    assert (row["sender"], row["receiver"], row["input"]) == ("a0.h1", "a1.h2", "k")
    assert next(r for r in rows if r["edge"] == "input->m0")["input"] == ""
    assert {r["in_circuit"] for r in rows} == {"true", "false"}
    only = X.to_csv_text(g, circuit_only=True).splitlines()
    assert len(only) == 2 + g.n_circuit_edges
    with pytest.raises(ValueError, match="header"):
        X.from_csv_text("\n".join(lines[1:]))


def test_dot_export_is_source(tmp_path):
    g = scored_graph()
    p = X.save(g, tmp_path / "c.dot", merge_qkv=True)
    text = p.read_text()
    assert text.startswith("digraph") and "rankdir=BT" in text
    with pytest.raises(ValueError, match="prune"):
        X.save(g, tmp_path / "big.gv", max_edges=3)
    assert not (tmp_path / "big.gv").exists()


def test_exports_work_without_dot_binary(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("dot") is None
    g = scored_graph()
    for fmt in ("json", "graphml", "gexf", "csv", "dot", "html"):  # html: the explorer, drawn by the browser
        assert X.save(g, tmp_path / "out" / f"c.{fmt}").stat().st_size > 0
    assert_same(g, X.load(tmp_path / "out" / "c.graphml"))
    for fmt in ("svg", "png"):
        with pytest.raises(RuntimeError, match="apt-get install graphviz"):
            X.save(g, tmp_path / "out" / f"c.{fmt}")
        assert not (tmp_path / "out" / f"c.{fmt}").exists()


def test_errors_and_files(tmp_path):
    g = scored_graph()
    with pytest.raises(ValueError, match="json, graphml, gexf, csv, dot"):
        X.save(g, tmp_path / "c.xlsx")
    with pytest.raises(ValueError, match="no suffix"):
        X.save(g, tmp_path / "c")
    with pytest.raises(ValueError, match="json, graphml, gexf, csv"):
        X.load(tmp_path / "c.svg")
    with pytest.raises(FileNotFoundError):
        X.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="every edge"):
        X.save(g, tmp_path / "c.json", circuit_only=True)
    with pytest.raises(TypeError, match="only apply"):
        X.save(g, tmp_path / "c.csv", merge_qkv=True)
    p = X.save(g, tmp_path / "deep" / "er" / "c.txt", format="csv")  # nested dirs, format overrides suffix
    assert X.load(p, format="csv").n_heads == 3
    with pytest.raises(FileExistsError, match="overwrite=True"):
        X.save(g, p, format="csv")
    g = g.with_provenance(faithfulness=0.5)
    X.save(g, p, format="csv", overwrite=True)
    assert X.load(p, format="csv").provenance.faithfulness == 0.5
    assert sorted(x.name for x in p.parent.iterdir()) == ["c.txt"]  # no temp files left
