"""Circuit diagrams: dot source, SVG content, options, errors, atomic writes, HTML page."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from collections import Counter

import graphviz
import pytest
import torch

from circuits.graph import Graph, Scoring
from circuits.render import diagram as R
from circuits.render import html as H

SVG_NS = "{http://www.w3.org/2000/svg}"
HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz `dot` program not installed")

CIRCUIT = {
    "input->a0.h1<q>": 0.5,
    "input->a0.h1<k>": 0.25,
    "input->m0": 1.0,
    "a0.h1->a1.h0<k>": -2.0,
    "a0.h1->a1.h1<v>": 0.75,
    "m0->a1.h0<q>": 0.1,
    "a1.h0->logits": 1.5,
    "a1.h1->logits": 0.0,
    "m0->logits": -0.3,
}


def small_graph(**meta) -> Graph:
    g = Graph.build(2, 2)
    scores = 0.01 * torch.ones(g.n_edges)  # out-of-circuit edges have scores too
    scores[g.edge_index(list(CIRCUIT))] = torch.tensor(list(CIRCUIT.values()))
    return g.with_scores(scores).with_circuit(list(CIRCUIT)).with_provenance(**meta)


def svg_nodes_edges(svg: str) -> tuple[set[str], Counter]:
    """Node titles and edge titles (``a->b``) of a Graphviz SVG, without the internal ``_`` helpers."""
    root = ET.fromstring(svg)
    nodes, edges = set(), Counter()
    for g in root.iter(f"{SVG_NS}g"):
        title = g.find(f"{SVG_NS}title")
        if title is None:
            continue
        if g.get("class") == "node" and not title.text.startswith("_"):
            nodes.add(title.text)
        elif g.get("class") == "edge":
            a, b = title.text.split("->")
            if not a.startswith("_") and not b.startswith("_"):
                edges[title.text] += 1
    return nodes, edges


def expected_drawn() -> tuple[set[str], Counter]:
    edges = Counter()
    nodes = set()
    for name in CIRCUIT:
        s, r = name.split("->")
        r = r.split("<")[0]
        edges[f"{s}->{r}"] += 1
        nodes |= {s, r}
    return nodes, edges


# ---------------------------------------------------------------------- dot source
def test_dot_source_has_circuit_only():
    src = R.to_dot(small_graph()).source
    for n in ("input", "a0.h1", "a1.h0", "a1.h1", "m0", "logits"):
        assert f'"{n}"' in src or f"\t{n} " in src
    assert "a0.h0" not in src and "m1" not in src  # not in the circuit
    assert "rankdir=BT" in src and "newrank=true" in src
    edge_lines = [ln for ln in src.splitlines() if " -> " in ln and "_rank" not in ln]
    assert len(edge_lines) == len(CIRCUIT)
    # a0.h1 -> a1.h0 into k: dashed, negative (red); q solid; v dotted; zero score grey
    line = next(ln for ln in src.splitlines() if '"a0.h1" -> "a1.h0"' in ln)
    assert "style=dashed" in line and R.NEGATIVE in line and "penwidth=5.00" in line
    assert "style=dotted" in next(ln for ln in src.splitlines() if '"a0.h1" -> "a1.h1"' in ln)
    assert "style=solid" in next(ln for ln in src.splitlines() if '-> "a1.h0"' in ln and "m0" in ln)
    assert R.NEUTRAL in next(ln for ln in src.splitlines() if '"a1.h1" -> logits' in ln)
    assert "a0.h1-&gt;a1.h0&lt;k&gt;" in src or "a0.h1->a1.h0<k>  score -2" in src


def test_ranks_one_per_stage():
    src = R.to_dot(small_graph()).source
    # stages: input 0, a0 heads 1, m0 2, a1 heads 3, logits 5
    assert src.count("rank=same") == 5
    block = src.split("_rank3")[1].split("}")[0]
    assert "a1.h0" in block and "a1.h1" in block


@needs_dot
def test_svg_has_exactly_the_circuit(tmp_path):
    out = R.render(small_graph(), tmp_path / "c.svg")
    nodes, edges = svg_nodes_edges(out.read_text())
    exp_nodes, exp_edges = expected_drawn()
    assert nodes == exp_nodes
    assert edges == exp_edges


@needs_dot
def test_merge_qkv_and_collapse_heads():
    g = small_graph()
    nodes, edges = svg_nodes_edges(R.svg_text(g, merge_qkv=True))
    assert edges["input->a0.h1"] == 1 and sum(edges.values()) == len(CIRCUIT) - 1
    merged = [e for e in R.drawn_edges(g, merge_qkv=True) if e.sender == "input" and e.receiver == "a0.h1"]
    assert merged[0].score == pytest.approx(0.75) and merged[0].input == ""
    nodes, edges = svg_nodes_edges(R.svg_text(g, collapse_heads=True))
    assert nodes == {"input", "a0", "m0", "a1", "logits"}
    assert edges["a1->logits"] == 1  # a1.h0 and a1.h1 -> logits summed
    e = next(e for e in R.drawn_edges(g, collapse_heads=True) if e.sender == "a1" and e.receiver == "logits")
    assert e.score == pytest.approx(1.5) and len(e.names) == 2


def test_groups_title_legend():
    g = small_graph(model="gpt2", task="ioi", scoring=Scoring(method="eap-ig"), faithfulness=0.912)
    src = R.to_dot(g, groups={"name movers": ["a1.h0", "a1.h1"], "unused": ["a0.h0"]}).source
    assert "subgraph cluster_group0" in src and "label=\"name movers\"" in src
    assert "cluster_group1" not in src  # no member in the circuit
    assert "gpt2 · ioi · eap-ig" in src and "9 edges · faithfulness 0.912" in src
    assert "_legend" in src and "into key (k)" in src
    assert "_legend" not in R.to_dot(g, legend=False).source
    assert "My title" in R.to_dot(g, title="My title").source
    with pytest.raises(ValueError, match="not a node"):
        R.to_dot(g, groups={"x": ["a7.h0"]})
    with pytest.raises(ValueError, match="two groups"):
        R.to_dot(g, groups={"x": ["a1.h0"], "y": ["a1.h0"]})


def test_empty_circuit_and_nan_scores():
    g = Graph.build(1, 1)
    g.in_circuit[:] = False
    assert "empty circuit" in R.to_dot(g).source
    g = small_graph()
    g.scores[:] = float("nan")
    assert R.NEUTRAL in R.to_dot(g).source


def test_max_edges_refused_unless_force():
    g = Graph.build(2, 2)  # every edge in the circuit
    with pytest.raises(ValueError, match=rf"{g.n_edges} edges.*prune"):
        R.to_dot(g, max_edges=10)
    assert R.to_dot(g, max_edges=10, force=True).source.count("->") > 10


# ---------------------------------------------------------------------- files
def test_unknown_format_and_existing_file(tmp_path):
    with pytest.raises(ValueError, match="svg, png, pdf"):
        R.render(small_graph(), tmp_path / "c.bmp")
    with pytest.raises(ValueError, match="svg, png, pdf"):
        R.render(small_graph(), tmp_path / "c")
    p = tmp_path / "c.svg"
    p.write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        R.render(small_graph(), p)
    assert p.read_text() == "keep me"


@needs_dot
def test_png_pdf_nested_dir_and_overwrite(tmp_path):
    p = R.render(small_graph(), tmp_path / "a" / "b" / "c.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p2 = R.render(small_graph(), p, overwrite=True, merge_qkv=True)
    assert p2 == p
    pdf = R.render(small_graph(), tmp_path / "c.out", format="pdf")
    assert pdf.read_bytes()[:4] == b"%PDF"


def test_failing_render_leaves_no_file(tmp_path, monkeypatch):
    def boom(self, *a, **k):
        raise graphviz.CalledProcessError(1, ["dot"], output=b"", stderr=b"syntax error")

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/dot")
    monkeypatch.setattr(graphviz.Digraph, "pipe", boom)
    with pytest.raises(RuntimeError, match="syntax error"):
        R.render(small_graph(), tmp_path / "out" / "c.svg")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_missing_dot_binary_clear_error(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(RuntimeError, match="apt-get install graphviz"):
        R.render(small_graph(), tmp_path / "c.svg")
    with pytest.raises(RuntimeError, match="brew install graphviz"):
        H.render_html(small_graph(), tmp_path / "c.html")
    # shutil.which fooled but the binary really absent: graphviz.ExecutableNotFound is translated
    monkeypatch.setattr(shutil, "which", lambda name: "/nonexistent/dot")
    with pytest.raises(RuntimeError, match="apt-get install graphviz"):
        R.render(small_graph(), tmp_path / "c.svg")
    assert list(tmp_path.iterdir()) == [empty]
    assert "digraph" in R.to_dot(small_graph()).source  # dot source needs no binary


@needs_dot
def test_html_page_tooltips_and_table(tmp_path):
    g = small_graph(model="gpt2")
    p = H.render_html(g, tmp_path / "c.html", top=3)
    text = p.read_text()
    assert "<svg" in text and "<?xml" not in text
    assert "a0.h1-&gt;a1.h0&lt;k&gt;  score -2</title>" in text  # hover text on the edge
    assert text.count("<tr><td>") == 3  # top-3 table
    assert "<script" not in text and "<link" not in text  # self-contained, offline
    top = H.top_edges(g, 2)
    assert [n for n, _ in top] == ["a0.h1->a1.h0<k>", "a1.h0->logits"]
