"""examples/quickstart.ipynb runs top to bottom in a Jupyter kernel, and graphs and reports display as HTML."""

from __future__ import annotations

import os
import shutil
import sys
from html import escape
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A kernel spec for this interpreter (so the kernel sees the same packages and PYTHONPATH)."""
    pytest.importorskip("nbclient")
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(tmp_path / "kernels" / "circuits-test")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return "circuits-test"


def html_of(output: dict) -> str:
    return output.get("data", {}).get("text/html", "")


def test_quickstart_notebook_runs(kernel_env):
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    nbclient.NotebookClient(nb, kernel_name=kernel_env, timeout=300,
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    circuit_html = html_of(code[2].outputs[-1])  # the cell that is just `circuit`
    if shutil.which("dot") is not None:
        assert "<svg" in circuit_html and "logits" in circuit_html
    else:
        assert "<table>" in circuit_html
    report_html = html_of(code[3].outputs[-1])
    assert "faithfulness" in report_html and "<table>" in report_html


def test_graph_html_falls_back_to_a_table(monkeypatch):
    import torch

    import circuits
    from circuits.render import notebook

    g = circuits.Graph.build(2, 2)
    circuit = circuits.prune.topn(g.with_scores(torch.arange(float(g.n_edges)) - 10), 5, prune=False)
    monkeypatch.setattr(notebook.shutil, "which", lambda name: None)  # no Graphviz
    html = notebook.graph_html(circuit)
    assert "<svg" not in html and "no Graphviz" in html
    strongest = notebook.graph_table(circuit)[0]
    assert abs(strongest[1]) == max(abs(s) for s in circuit.scores[circuit.in_circuit].tolist())
    assert escape(strongest[0]) in html and f"5 of {g.n_edges} edges" in notebook.graph_text(circuit)
    assert notebook.to_html(object()) is None


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_graph_html_draws_the_circuit():
    import torch

    import circuits
    from circuits.render import notebook

    g = circuits.Graph.build(2, 2)
    circuit = circuits.prune.topn(g.with_scores(torch.arange(float(g.n_edges))), 4, prune=False)
    html = notebook.graph_html(circuit)
    assert html.startswith('<div') and "<svg" in html and "<?xml" not in html
    assert "<svg" not in notebook.graph_html(g.with_circuit(torch.zeros(g.n_edges, dtype=torch.bool)))


def test_import_registers_no_display_outside_ipython():
    import subprocess

    r = subprocess.run([sys.executable, "-c", "import circuits, sys; assert 'IPython' not in sys.modules; "
                        "assert 'torch' not in sys.modules"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
