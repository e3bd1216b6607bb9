"""The CLI end to end on a zoo model, and its error messages."""

import json
import shutil
import xml.etree.ElementTree as ET

import pytest
import torch

from circuits.cli import main
from circuits.pipeline import OUTPUTS as DISCOVER_OUTPUTS
from circuits.render.explorer import page_data

MODEL = "stories260k"
TASK = ["--task", "pronoun"]
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")


@needs_dot
def test_discover_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["discover", "--model", MODEL, *TASK, "--method", "eap", "--edges", "20", "--n-examples", "16",
                 "--batch-size", "8", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "faithfulness" in printed and "edges" in printed
    for name in DISCOVER_OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert report["n_edges"] <= 20 and "faithfulness" in report
    circuit = json.loads((out / "circuit.json").read_text())
    assert circuit["format"] == "circuits.graph"
    scores = torch.load(out / "scores.pt")
    assert len(scores["edges"]) == scores["scores"].numel() == circuit["n_edges"]
    ET.parse(out / "circuit.svg")
    ET.parse(out / "curve.svg")
    assert (out / "circuit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run into the same folder needs --force
    assert main(["discover", "--model", MODEL, *TASK, "--method", "eap", "--n-examples", "16", "--out", str(out), "--quiet"]) != 0
    assert "--force" in capsys.readouterr().err
    # re-render and evaluate the saved circuit
    assert main(["render", str(out / "circuit.json"), "--out", str(tmp_path / "c.dot")]) == 0
    # the explorer: discover's circuit.html and render's .html both carry the run's curve (from report.json)
    assert main(["render", str(out / "circuit.json"), "--out", str(tmp_path / "x.html")]) == 0
    assert f"curve from {out / 'report.json'}" in capsys.readouterr().out
    finite = [f for f in report["curve"]["faithfulness"] if f is not None]
    for page in (out / "circuit.html", tmp_path / "x.html"):
        data = page_data(page.read_text())
        assert data["curve"]["faithfulness"] == finite and data["circuit_edges"] == report["n_edges"]
    assert main(["evaluate", "--model", MODEL, *TASK, "--circuit", str(out / "circuit.json"), "--n-examples", "16"]) == 0


def test_listing_commands(capsys):
    assert main(["tasks"]) == 0
    assert "ioi" in capsys.readouterr().out
    assert main(["models"]) == 0
    assert MODEL in capsys.readouterr().out


def test_bad_inputs(tmp_path, capsys):
    assert main(["discover", "--model", "no-such-model", "--out", str(tmp_path / "x")]) == 2
    assert "stories260k" in capsys.readouterr().err  # lists the valid names
    assert main(["discover", "--model", MODEL, *TASK, "--method", "magic", "--out", str(tmp_path / "x")]) != 0
    assert "eap-ig-inputs" in capsys.readouterr().err
    assert main(["discover", "--model", str(tmp_path / "missing-folder"), "--task", "ioi", "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["discover", "--help"])
