"""MIB submission folders: names, the nine circuits within their bounds (MIB's top-k by |score| rule),
the importance file, all-or-nothing writing and the errors."""

from __future__ import annotations

import json

import pytest
import torch

import circuits
from circuits.render.mib import load_mib
from circuits.render.mib_submission import (
    IMPORTANCES_FILE,
    MIB_MODELS,
    MIB_PERCENTS,
    check_scores,
    circuit_file,
    folder_name,
    mib_circuits,
    write_submission,
)


def scored(model: str = "interpbench", seed: int = 0) -> circuits.Graph:
    m = MIB_MODELS[model]
    g = circuits.Graph.build(m.n_layers, m.n_heads, m.parallel_attn_mlp)
    return g.with_scores(torch.randn(g.n_edges, generator=torch.Generator().manual_seed(seed)))


def test_folder_names():
    assert folder_name("ioi", "gpt2") == "ioi_gpt2"
    assert folder_name("arithmetic_addition", "llama3") == "arithmetic-addition_llama3"
    with pytest.raises(ValueError, match="unknown MIB task"):
        folder_name("pronoun", "gpt2")
    with pytest.raises(ValueError, match="unknown MIB model"):
        folder_name("ioi", "stories260k")
    with pytest.raises(ValueError, match="does not evaluate"):
        folder_name("arc-challenge", "gpt2")


def test_nine_circuits_follow_mibs_rule():
    g = scored()
    E = g.n_edges
    order = torch.argsort(g.scores.abs(), descending=True, stable=True)
    out = mib_circuits(g)
    assert list(out) == list(MIB_PERCENTS)
    for p, c in out.items():
        assert c.n_circuit_edges <= p / 100 * E
        top = torch.zeros(E, dtype=torch.bool)
        top[order[: int(p / 100 * E)]] = True
        assert not bool((c.in_circuit & ~top).any())  # only top-|score| edges
        assert c.n_circuit_edges == circuits.prune.remove_dangling(g.with_circuit(top)).n_circuit_edges
    assert out[50].n_circuit_edges > out[0.1].n_circuit_edges


def test_write_circuits_then_importances(tmp_path):
    g = scored()
    files = write_submission(g, tmp_path, "ioi", "interpbench", "circuits")
    folder = tmp_path / "ioi_interpbench"
    assert sorted(p.name for p in folder.iterdir()) == sorted(circuit_file(p) for p in MIB_PERCENTS)
    for path, n in files.items():
        d = json.loads(path.read_text())
        assert d["cfg"] == {"n_layers": 6, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 64}
        assert sum(e["in_graph"] for e in d["edges"].values()) == n
    assert not list(tmp_path.glob(".*"))  # no staging folder left
    with pytest.raises(FileExistsError, match="not empty"):
        write_submission(g, tmp_path, "ioi", "interpbench", "importances")
    files = write_submission(g, tmp_path, "ioi", "interpbench", "importances", overwrite=True)
    assert [p.name for p in folder.iterdir()] == [IMPORTANCES_FILE]  # the circuits of the other kind are gone
    back = load_mib(folder / IMPORTANCES_FILE)
    assert torch.allclose(back.scores, g.scores) and bool(back.in_circuit.all())


def test_bad_scores(tmp_path):
    with pytest.raises(ValueError, match="MIB's gpt2 .* has 12 layers x 12 heads"):
        check_scores(scored("interpbench"), "gpt2")
    g = scored()
    nan = g.with_scores(torch.where(torch.arange(g.n_edges) < 3, float("nan"), g.scores))
    with pytest.raises(ValueError, match="3 edge"):
        write_submission(nan, tmp_path, "ioi", "interpbench", "circuits")
    assert not any(tmp_path.iterdir())
