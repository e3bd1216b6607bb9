"""The CLI's MIB and compare commands: `circuits export-mib`, `circuits compare`, and EAP-IG / MIB files read
by `render` and `evaluate`; every mistake is one line, exit code 2, no output (docs/errors.md)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_cli_errors import empty, error_of, zoo_graph
from transformers import GPT2Config

import circuits
from circuits.cli import main
from circuits.cli.parser import MIB_MODELS, MIB_TASKS
from circuits.render import mib_submission
from circuits.render.mib import save_mib, to_mib_dict


def interpbench_scores(tmp_path, name="scores.json", seed=0):
    g = circuits.Graph.build(6, 4)
    g = g.with_scores(torch.randn(g.n_edges, generator=torch.Generator().manual_seed(seed)))
    path = tmp_path / name
    g.save_json(path)
    return path


def test_names_agree_with_the_engine():
    assert MIB_TASKS == mib_submission.MIB_TASKS and MIB_MODELS == tuple(mib_submission.MIB_MODELS)


# ---------------------------------------------------------------------- export-mib
def test_export_mib_gpt2_importances(tmp_path, capsys):
    g = circuits.graph_for(GPT2Config())
    scores = tmp_path / "circuit.json"
    g.with_scores(torch.randn(g.n_edges, generator=torch.Generator().manual_seed(0))).save_json(scores)
    assert main(["export-mib", str(scores), "--task", "ioi", "--model", "gpt2", "--out", str(tmp_path / "sub")]) == 0
    d = json.loads((tmp_path / "sub" / "ioi_gpt2" / "importances.json").read_text())
    assert len(d["edges"]) == 32491 and d["cfg"]["d_model"] == 768
    assert "32491 edge scores" in capsys.readouterr().out


def test_export_mib_circuits(tmp_path, capsys):
    scores = interpbench_scores(tmp_path)
    out = tmp_path / "sub"
    assert main(["export-mib", str(scores), "--task", "ioi", "--model", "interpbench", "--out", str(out), "--circuits"]) == 0
    assert len(list((out / "ioi_interpbench").iterdir())) == 9
    assert "edges_50pct.json" in capsys.readouterr().out
    error_of(["export-mib", str(scores), "--task", "ioi", "--model", "interpbench", "--out", str(out)], capsys,
             "ioi_interpbench already holds files", "--force")
    assert main(["export-mib", str(scores), "--task", "ioi", "--model", "interpbench", "--out", str(out), "--force"]) == 0
    assert [p.name for p in (out / "ioi_interpbench").iterdir()] == ["importances.json"]


@pytest.mark.parametrize("task, model, needles", [
    ("pronoun", "interpbench", ("--task pronoun", "not a MIB task", "ioi")),
    ("ioi", "stories260k", ("--model stories260k", "not a MIB model", "gpt2")),
    ("arc-easy", "interpbench", ("MIB does not evaluate", "arc-easy_gemma2")),
    ("ioi", "gpt2", ("scores.json", "6 layers x 4 heads", "gpt2", "12 layers x 12 heads")),
])
def test_export_mib_bad_names_and_shapes(tmp_path, capsys, task, model, needles):
    scores = interpbench_scores(tmp_path)
    error_of(["export-mib", str(scores), "--task", task, "--model", model, "--out", str(tmp_path / "sub")], capsys,
             *needles)
    assert empty(tmp_path / "sub")


def test_export_mib_bad_files(tmp_path, capsys):
    out = ["--task", "ioi", "--model", "interpbench", "--out", str(tmp_path / "sub")]
    g = circuits.Graph.build(6, 4)
    no_scores = to_mib_dict(g, d_model=64)
    for e in no_scores["edges"].values():
        e["score"] = None
    (tmp_path / "binary.json").write_text(json.dumps(no_scores))
    error_of(["export-mib", str(tmp_path / "binary.json"), *out], capsys, "binary.json", "without a finite score")
    neurons = to_mib_dict(g, d_model=64)
    neurons["nodes"]["m0"]["neurons_scores"] = [0.0] * 64
    (tmp_path / "neurons.json").write_text(json.dumps(neurons))
    error_of(["export-mib", str(tmp_path / "neurons.json"), *out], capsys, "neurons.json", "neuron-level",
             "not supported", "edge-level")
    (tmp_path / "cut.json").write_text('{"cfg": {"n_layers": 6, ')
    error_of(["export-mib", str(tmp_path / "cut.json"), *out], capsys, "cut.json", "truncated JSON")
    (tmp_path / "file").write_text("x")
    error_of(["export-mib", str(tmp_path / "binary.json"), *out[:4], "--out", str(tmp_path / "file")], capsys,
             "is a file, not a folder")
    assert empty(tmp_path / "sub")


# ---------------------------------------------------------------------- render / evaluate read EAP-IG files
def test_render_and_evaluate_read_mib_files(tmp_path, capsys):
    g = zoo_graph("induction-2l")
    c = circuits.prune.topn(g.with_scores(torch.linspace(-1, 1, g.n_edges)), 12)
    mib = save_mib(c, tmp_path / "induction.json", d_model=32)
    assert main(["render", str(mib), "--out", str(tmp_path / "c.csv")]) == 0
    assert circuits.load(tmp_path / "c.csv").circuit_edges() == c.circuit_edges()
    wide = save_mib(circuits.Graph.build(12, 12), tmp_path / "gpt2.json", d_model=768)
    error_of(["evaluate", "--model", "induction-2l", "--circuit", str(wide), "--quiet"], capsys,
             "gpt2.json", "12 layers x 12 heads", "--model induction-2l")


# ---------------------------------------------------------------------- compare
def test_compare_errors(tmp_path, capsys):
    a = interpbench_scores(tmp_path, "a.json")
    error_of(["compare", str(a)], capsys, "at least 2")
    other = tmp_path / "small.json"
    circuits.Graph.build(2, 2).save_json(other)
    error_of(["compare", str(a), str(other)], capsys, "small.json", "2 layers x 2 heads", "6 layers x 4 heads")
    error_of(["compare", str(a), str(a)], capsys, "given twice")
    b = interpbench_scores(tmp_path, "b.json", seed=1)
    error_of(["compare", str(a), str(b), "--task", "ioi"], capsys, "--task needs --model")
    error_of(["compare", str(a), str(b), "--model", "induction-2l"], capsys, "--model induction-2l", "6 layers x 4 heads")
    assert not (tmp_path / "cmp").exists()


def test_compare_writes_all_outputs(tmp_path, capsys):
    g = circuits.Graph.build(2, 2).with_scores(torch.arange(46.0))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    circuits.prune.topn(g, 10, prune=False).save_json(a)
    circuits.prune.topn(g, 20, prune=False).save_json(b)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--reference", str(b), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "edge J" in printed and "against" in printed
    d = json.loads((out / "compare.json").read_text())
    assert d["n_edges"] == [10, 20] and d["recall"][str(a)] == pytest.approx(0.5)
    assert (out / "compare.svg").exists() == (shutil.which("dot") is not None)
    error_of(["compare", str(a), str(b), "--out", str(out)], capsys, "already holds results", "--force")
