"""Runs across processes (torch.distributed, gloo on the CPU) equal the single-process runs.

One ``torchrun --nproc-per-node 2`` job (tests/parallel_job.py) computes attribution scores, exact effects
(data- and mask-parallel), per-example values, curves, an ACDC circuit and a CLI discovery; this module
computes the same in one process and compares. The job also shows that mismatched data is refused and
that a failing rank ends the job with rank 0's message and no outputs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from circuits import zoo
from circuits.cli import main as cli_main
from circuits.parallel import shard, shard_range, world

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from parallel_job import MODEL, compute, job_task  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")


def test_shards_are_contiguous_and_cover_everything():
    for n in (0, 1, 5, 7, 24):
        for size in (1, 2, 3, 5):
            parts = [shard_range(n, r, size) for r in range(size)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert world() == (0, 1) and shard([3, 4, 5]) == [3, 4, 5]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(_free_port()), str(HERE / "parallel_job.py"), str(folder)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert (folder / "results.pt").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, folder, torch.load(folder / "results.pt", weights_only=False)


@pytest.fixture(scope="module")
def single():
    torch.set_num_threads(1)
    model = zoo.load_model(zoo.model_path(MODEL))
    return compute(model, job_task())


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    scale = float(b.abs().max()) or 1.0
    assert float((a - b).abs().max()) <= rel * scale, (float((a - b).abs().max()), scale)


@pytest.mark.parametrize("name", ["eap", "ig", "exact_data", "exact_masks", "per_example_data", "per_example_masks",
                                  "curve_data", "curve_masks"])
def test_two_processes_equal_one(job, single, name):
    _, _, results = job
    assert results[name].shape == single[name].shape
    _close(results[name], single[name])


def test_acdc_takes_the_same_decisions(job, single):
    assert torch.equal(job[2]["acdc"], single["acdc"])


def test_cli_under_torchrun_writes_the_single_process_circuit(job, tmp_path):
    _, folder, results = job
    assert int(results["cli_exit"]) == 0
    code = cli_main(["discover", "--model", MODEL, "--task", "induction", "--n-examples", "24", "--method", "exact",
                     "--faithfulness", "0.8", "--refine", "--batch-size", "5", "--quiet", "--out", str(tmp_path / "one")])
    assert code == 0
    two = json.loads((folder / "cli" / "circuit.json").read_text())
    one = json.loads((tmp_path / "one" / "circuit.json").read_text())
    assert [(e[0], e[2]) for e in two["edges"]] == [(e[0], e[2]) for e in one["edges"]]  # same circuit
    _close(torch.tensor([e[1] for e in two["edges"]]), torch.tensor([e[1] for e in one["edges"]]))
    report = json.loads((folder / "cli" / "report.json").read_text())
    assert report["settings"]["processes"] == 2


def test_mismatched_data_is_refused(job):
    assert "disagree on the data" in job[2]["mismatch"]


def test_a_failing_rank_ends_the_job_without_outputs(job):
    proc, folder, _ = job
    assert proc.returncode != 0
    assert not (folder / "failed").exists()
    assert "another process of the job failed" in (folder / "rank0_failure.txt").read_text()
