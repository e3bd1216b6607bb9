"""Every example script runs on its smallest setting."""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_demo(tmp_path):
    report = load("demo").main(["--out", str(tmp_path), "--n", "16", "--edges", "20"])
    assert (tmp_path / "circuit.svg").exists() and (tmp_path / "circuit.json").exists()
    assert report.n_edges <= 20


def test_ioi_gpt2_skips_without_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GPT2_DIR", raising=False)
    assert load("ioi_gpt2").main(["--model-dir", str(tmp_path / "absent")]) == 0
    assert "skipped" in capsys.readouterr().out


def test_custom_task(tmp_path):
    f = load("custom_task").main(["--out", str(tmp_path), "--edges", "10"])
    assert f == f  # a number, not NaN


def test_compare_methods():
    results = load("compare_methods").main(["--model", "marker_copy", "--n", "8", "--acdc-tau", "1.0"])
    assert results["eap-ig-inputs"][0] > 0.9  # IG ranks the planted edges first


def test_path_patching(tmp_path):
    out = tmp_path / "h.png"
    grid = load("path_patching").main(["--n", "8", "--out", str(out)])
    assert out.exists() and grid.shape == (5, 8)
