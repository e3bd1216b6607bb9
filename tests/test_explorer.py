"""The interactive explorer (circuits/render/explorer.py + static/explorer.js).

Python side (no browser): the embedded edges, ranks and curve; the page is self-contained; save/CLI
rules. Browser side: headless Chromium driven over the DevTools protocol (tests/chromium.py) checks
what the page draws against Python computations of the same circuits and paths.
"""

from __future__ import annotations

import json
import math
import re

import networkx as nx
import pytest
import torch
from chromium import Browser, find_chromium

import circuits
from circuits.cli import main
from circuits.evaluation import Curve
from circuits.graph import Graph
from circuits.render import explorer as X
from circuits.render.diagram import drawn_edges

CHROMIUM = find_chromium()


def random_graph(layers: int = 3, heads: int = 4, seed: int = 0) -> Graph:
    g = Graph.build(layers, heads)
    return g.with_scores(torch.randn(g.n_edges, generator=torch.Generator().manual_seed(seed)))


def hand_curve(g: Graph, kind: str = "CMD") -> Curve:
    return Curve(fractions=[0.1, 0.3, 0.6, 0.9], n_edges=[8, 30, 60, 100], faithfulness=[0.2, 0.6, float("nan"), 0.9],
                 kind=kind, area=0.5, n_requested=[10, 50, 80, 120], total_edges=g.n_edges)


def embedded_names(data: dict) -> list[str]:
    e, n = data["edges"], data["nodes"]
    return [f"{n[s]['name']}->{n[r]['name']}" + (f"<{c}>" if c else "") for s, r, c in zip(e["sender"], e["receiver"], e["slot"])]


def drawn_names(graph: Graph, **kw) -> set[str]:
    return {f"{d.sender}->{d.receiver}" + (f"<{d.input}>" if d.input else "") for d in drawn_edges(graph, **kw)}


# ---------------------------------------------------------------------- embedded data (no browser)
@pytest.mark.parametrize("absolute", [True, False])
def test_embedded_edges_are_ranked_as_topn(absolute):
    g = circuits.prune.topn(random_graph(), 30, absolute=absolute)
    data = X.explorer_data(g, top=100, absolute=absolute)
    names, ranks = embedded_names(data), data["edges"]["rank"]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert data["top"] == 100 and data["total_edges"] == g.n_edges and data["absolute"] is absolute
    for k in (1, 7, 40, 100):  # the top k of the page = Python's topn(k) before pruning, and a prefix
        expected = set(circuits.prune.topn(g, k, absolute=absolute, prune=False).circuit_edges())
        assert {n for n, r in zip(names, ranks) if r <= k} == expected
        assert set(names[:k]) == expected
    in_circuit = {n for n, c in zip(names, data["edges"]["circuit"]) if c}
    assert in_circuit == set(g.circuit_edges()) and data["circuit_edges"] == len(in_circuit)
    assert len(names) == len(set(names) | set(g.circuit_edges())) == len(set(names))
    scores = dict(zip(g.edge_names(), g.scores.tolist()))
    assert all(math.isclose(scores[n], s, rel_tol=1e-6) for n, s in zip(names, data["edges"]["score"]))


def test_circuit_edges_beyond_top_are_embedded_with_their_rank():
    g = random_graph()
    weakest = g.edge_names([int(g.scores.abs().argmin())])
    g = g.with_circuit(weakest)
    data = X.explorer_data(g, top=5)
    assert len(embedded_names(data)) == 6 and embedded_names(data)[-1] == weakest[0]
    assert data["edges"]["rank"][-1] == g.n_edges and data["edges"]["circuit"][-1] == 1


def test_curve_points_and_ranking_follow_the_curve():
    g = circuits.prune.topn(random_graph(), 20)
    data = X.explorer_data(g, curve=hand_curve(g, "CPR"))
    assert data["curve"]["n_requested"] == [10, 50, 120] and data["curve"]["faithfulness"] == [0.2, 0.6, 0.9]
    assert data["curve"]["kind"] == "CPR" and data["absolute"] is False  # CPR curves rank signed scores
    assert X.explorer_data(g, curve=hand_curve(g, "CMD"))["absolute"] is True
    assert X.explorer_data(g)["curve"] is None
    with pytest.raises(ValueError, match="curve of this circuit"):
        X.explorer_data(circuits.prune.topn(random_graph(2, 2), 5), curve=hand_curve(g))


def test_nan_scores_rank_last_and_are_null():
    g = random_graph(2, 2)
    s = g.scores.clone()
    s[3] = float("nan")
    data = X.explorer_data(g.with_scores(s), top=g.n_edges)
    assert data["edges"]["rank"][-1] == g.n_edges and data["edges"]["score"][-1] is None
    assert embedded_names(data)[-1] == g.edge_names([3])[0]


def test_page_is_self_contained_and_escapes_its_data(tmp_path):
    g = circuits.prune.topn(random_graph(), 20).with_provenance(model="</script><script>alert(1)</script>")
    text = X.render_explorer(g, tmp_path / "c.html").read_text()
    assert text.count("</script>") == 2 and "alert(1)</script>" not in text
    assert X.page_data(text)["meta"]["model"] == "</script><script>alert(1)</script>"
    urls = set(re.findall(r"https?://[^\s\"')]+", text))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls  # the SVG namespace is a name, not a fetch
    for fetching in ("<link", " src=", "fetch(", "XMLHttpRequest", "import(", "@import"):
        assert fetching not in text, fetching


def test_save_html_rules(tmp_path):
    g = circuits.prune.topn(random_graph(), 20)
    path = circuits.save(g, tmp_path / "c.html", merge_qkv=True, groups={"early": ["a0.h1", "a0.h2"]})
    data = X.page_data(path.read_text())
    assert data["options"] == {"merge_qkv": True, "collapse_heads": False}
    assert [x["name"] for x in data["nodes"] if x["name"] in ("a0.h1", "a0.h2")]  # group members are embedded
    with pytest.raises(FileExistsError):
        circuits.save(g, tmp_path / "c.html")
    with pytest.raises(ValueError, match="not a node"):
        circuits.save(g, tmp_path / "d.html", groups={"x": ["a9.h9"]})
    big = random_graph().with_circuit(torch.ones(random_graph().n_edges, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_edges=10"):
        circuits.save(big, tmp_path / "d.html", max_edges=10)
    assert circuits.save(big, tmp_path / "d.html", max_edges=10, force=True).exists()


def test_cli_render_html(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    g = circuits.prune.topn(random_graph(), 20)
    g.save_json(folder / "circuit.json")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no Graphviz: the explorer does not need it
    assert main(["render", str(folder / "circuit.json"), "--out", str(tmp_path / "a.html")]) == 0
    assert "no curve" in capsys.readouterr().out
    assert main(["render", str(folder / "circuit.json"), "--out", str(tmp_path / "a.html")]) == 2
    assert "--force" in capsys.readouterr().err
    (folder / "report.json").write_text(json.dumps({"format": "circuits.report", "curve": hand_curve(g).to_dict()}))
    assert main(["render", str(folder / "circuit.json"), "--out", str(tmp_path / "a.html"), "--force"]) == 0
    assert "curve from" in capsys.readouterr().out
    assert X.page_data((tmp_path / "a.html").read_text())["curve"]["n_requested"] == [10, 50, 120]
    (tmp_path / "nocurve.json").write_text(json.dumps({"format": "circuits.report", "curve": None}))
    for argv, needle in ((["--report", str(tmp_path / "nocurve.json")], "no faithfulness curve"),
                         (["--report", str(tmp_path / "missing.json")], "no such file")):
        assert main(["render", str(folder / "circuit.json"), "--out", str(tmp_path / "b.html"), *argv]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert main(["render", str(folder / "circuit.json"), "--out", str(tmp_path / "b.csv"), "--report",
                 str(folder / "report.json")]) == 2
    assert "--report only applies" in capsys.readouterr().err
    assert not (tmp_path / "b.html").exists() and not (tmp_path / "b.csv").exists()


# ---------------------------------------------------------------------- in the browser
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    b = Browser(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def centre_of(browser: Browser, selector: str) -> tuple[float, float]:
    r = browser.eval(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                     " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    return r[0], r[1]


def set_slider(browser: Browser, k: int) -> None:
    browser.eval(f"(() => {{ const s = document.getElementById('slider'); s.value = {k};"
                 " s.dispatchEvent(new Event('input')); })()")


def paths_through(drawn: set[str], node: str) -> set[str]:
    """Drawn edges on some input -> node -> logits path, by enumerating every simple path (networkx)."""
    pair = {name: (name.split("->")[0], re.sub(r"<.>$", "", name.split("->")[1])) for name in drawn}
    dag = nx.DiGraph(list(pair.values()))
    on: set[tuple[str, str]] = set()
    for path in nx.all_simple_paths(dag, "input", "logits"):
        if node in path:
            on |= set(zip(path, path[1:]))
    return {name for name, p in pair.items() if p in on}


def test_explorer_in_chromium(browser, tmp_path):
    g = circuits.prune.topn(random_graph(), 40).with_provenance(model="demo", task="ioi")
    page = X.render_explorer(g, tmp_path / "c.html", curve=hand_curve(g))
    browser.open(page.as_uri())
    assert browser.eval("document.querySelectorAll('#edges path').length") == g.n_circuit_edges
    # the slider redraws topn(k) without dangling edges; faithfulness interpolated from the curve
    k = 25
    set_slider(browser, k)
    top = circuits.prune.topn(g, k)
    assert browser.eval("document.querySelectorAll('#edges path').length") == top.n_circuit_edges
    assert set(browser.eval("window.explorer.drawnNames()")) == drawn_names(top)
    f = 0.2 + (k - 10) / (50 - 10) * (0.6 - 0.2)
    assert f"≈ {f:.3f}" in browser.eval("document.getElementById('faith').textContent")
    # hover an edge: its name, score, rank and slot
    path = browser.eval("(() => { const p = document.querySelector('#edges path'); const q = p.getPointAtLength("
                        "p.getTotalLength() / 2).matrixTransform(p.getScreenCTM()); return [q.x, q.y, p.dataset.k]; })()")
    browser.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": path[0], "y": path[1]})
    tip = browser.eval("document.getElementById('tip').textContent")
    assert "->" in tip and "score" in tip and "rank" in tip and "slot" in tip, tip
    # click a node: every drawn input -> node -> logits path is highlighted
    drawn = drawn_names(top)
    node = max({n.split("->")[0] for n in drawn} - {"input"}, key=lambda n: len(paths_through(drawn, n)))
    browser.click(*centre_of(browser, f'.node[data-name="{node}"]'))
    assert set(browser.eval("window.explorer.highlightedNames()")) == paths_through(drawn, node) != set()
    assert browser.eval("document.querySelectorAll('#edges path.hl').length") == len(paths_through(drawn, node))
    # search box
    browser.click(*centre_of(browser, "#search"))
    browser.type_text("a1.")
    nodes = {x for n in drawn for x in re.sub(r"<.>", "", n).split("->")}
    assert sorted(browser.eval("window.explorer.matches")) == sorted(n for n in nodes if "a1." in n)
    full = browser.eval("document.getElementById('view').getAttribute('viewBox')")
    browser.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13})
    assert browser.eval("document.getElementById('view').getAttribute('viewBox')") != full  # Enter zooms to the matches
    browser.click(*centre_of(browser, "#fit"))
    assert browser.eval("document.getElementById('view').getAttribute('viewBox')") == full
    # toggles: merged q/k/v, then collapsed heads, as the static diagram merges them
    browser.click(*centre_of(browser, "#merge"))
    assert set(browser.eval("window.explorer.drawnNames()")) == drawn_names(top, merge_qkv=True)
    browser.click(*centre_of(browser, "#collapse"))
    both = drawn_names(top, merge_qkv=True, collapse_heads=True)
    assert browser.eval("document.querySelectorAll('#edges path').length") == len(both)
    assert set(browser.eval("window.explorer.drawnNames()")) == both
    # zoom (wheel) and pan (drag) move the view box
    before = browser.eval("document.getElementById('view').getAttribute('viewBox')")
    browser.call("Input.dispatchMouseEvent", {"type": "mouseWheel", "x": 600, "y": 400, "deltaX": 0, "deltaY": -300})
    zoomed = browser.eval("document.getElementById('view').getAttribute('viewBox')")
    assert float(zoomed.split()[2]) < float(before.split()[2])
    for kind, x, buttons in (("mousePressed", 300, 1), ("mouseMoved", 360, 1), ("mouseReleased", 360, 0)):
        browser.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": 160, "button": "left", "buttons": buttons,
                                                  "clickCount": 1})
    assert browser.eval("document.getElementById('view').getAttribute('viewBox')").split()[0] != zoomed.split()[0]
    browser.screenshot(tmp_path / "explorer.png")
    assert (tmp_path / "explorer.png").stat().st_size > 1000
    assert browser.errors() == []


def test_explorer_2000_edges_in_chromium(browser, tmp_path):
    g = random_graph(7, 6, seed=1)  # 3,018 edges; its top 2,200 keep every edge when dangling ones are removed
    g = g.with_circuit(torch.ones(g.n_edges, dtype=torch.bool))
    page = X.render_explorer(g, tmp_path / "big.html", top=2200, force=True)
    browser.open(page.as_uri())
    assert browser.eval("document.querySelectorAll('#edges path').length") == g.n_edges  # the saved circuit
    timings = {"load (saved circuit)": browser.eval("window.explorer.lastRedrawMs")}
    for k in (2200, 1000, 2000, 200, 2200):
        set_slider(browser, k)
        expected = circuits.prune.topn(g, k).n_circuit_edges
        assert browser.eval("document.querySelectorAll('#edges path').length") == expected
        timings[f"top {k} ({expected} edges)"] = browser.eval("window.explorer.lastRedrawMs")
    assert expected >= 2000
    assert browser.eval("document.getElementById('faith').textContent") == "no curve"
    browser.click(*centre_of(browser, "#merge"))
    timings["merge"] = browser.eval("window.explorer.lastRedrawMs")
    print(f"\nexplorer redraw times (ms, in-page performance.now(), {g.n_edges} edges): {timings}")
    assert browser.errors() == []


def test_static_files_are_package_data():
    """An installed package has the page's script and style: pyproject's package-data globs cover them."""
    import fnmatch
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parent.parent
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["circuits.render"]
    static = sorted(p.relative_to(root / "circuits" / "render").as_posix() for p in (root / "circuits/render/static").iterdir())
    assert static == ["static/explorer.css", "static/explorer.js"]
    assert all(any(fnmatch.fnmatch(f, g) for g in globs) for f in static)
