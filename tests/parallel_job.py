"""One torchrun job of tests/test_parallel.py (not a test module itself): run under ``torchrun --nproc-per-node N``.

``python -m torch.distributed.run --nproc-per-node 2 tests/parallel_job.py OUT`` computes, inside the
process group, what test_parallel.py compares with a single process: attribution scores, exact
effects (data- and mask-parallel), per-example values, a curve, an ACDC circuit, edge pruning's
scores, then the CLI's discover; then it checks that mismatched data is refused and that a rank
that fails ends the job without outputs. Rank 0 saves everything to ``OUT/results.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from circuits import zoo
from circuits.cli import main as cli_main
from circuits.evaluation import faithfulness_curve
from circuits.parallel import RankFailure, RankMismatchError, agree, fingerprint, init_from_env, is_main, world
from circuits.patching import PatchRunner, acdc, exact_edge_effects
from circuits.pipeline import discover, write_outputs
from circuits.scores import attribute, edge_pruning
from circuits.tasks import load_task

MODEL = "induction-2l"


def job_task(seed: int = 0):
    tok = zoo.load_tokenizer(zoo.model_path(MODEL))
    return load_task("induction", tok, n=24, seed=seed, **zoo.task_options(MODEL, "induction"))


def compute(model, task) -> dict[str, torch.Tensor]:
    """Everything compared between 1 and N processes (also called by the test in one process)."""
    out: dict[str, torch.Tensor] = {}
    eap = attribute(model, task, method="eap", batch_size=5)
    out["eap"] = eap.scores
    out["ig"] = attribute(model, task, method="eap-ig-inputs", steps=2, batch_size=5).scores
    for mode in ("data", "masks"):
        r = PatchRunner(model, task, batch_size=5, parallel=mode)
        out[f"exact_{mode}"] = exact_edge_effects(None, None, runner=r)
        masks = (torch.rand(7, r.layout.n_edges, generator=torch.Generator().manual_seed(3)) < 0.5).float()
        out[f"per_example_{mode}"] = r.evaluate(masks, per_example=True)["m"]
        out[f"curve_{mode}"] = torch.tensor(faithfulness_curve(model, eap, task, runner=r).faithfulness)
    out["acdc"] = acdc(model, task, 0.02, metric="kl_div", batch_size=5).graph.in_circuit
    # a bar on rank 0 only (as the CLI runs): its f evaluations all-reduce, so every rank must take part
    out["pruning"] = edge_pruning(model, task, target_edges=40, steps=6, batch_size=5, seed=1, progress=is_main()).scores
    agree("edge pruning's learned scores", fingerprint(out["pruning"]))  # every rank took the same steps
    return out


def main(folder: Path) -> None:
    init_from_env()
    rank, size = world()
    model = zoo.load_model(zoo.model_path(MODEL))
    task = job_task()
    results = compute(model, task)
    # the CLI inside the same group (it leaves a group it did not create alone)
    results["cli_exit"] = torch.tensor(cli_main(["discover", "--model", MODEL, "--task", "induction", "--n-examples",
                                                 "24", "--method", "exact", "--faithfulness", "0.8", "--refine",
                                                 "--batch-size", "5", "--quiet", "--out", str(folder / "cli")]))
    try:  # every rank must hold the same data
        attribute(model, job_task(seed=rank), method="eap", batch_size=5)
        results["mismatch"] = "not detected"
    except RankMismatchError as err:
        results["mismatch"] = str(err)
    if is_main():
        torch.save(results, folder / "results.pt")
    dist.barrier()

    calls = {"n": 0}

    def failing(logits, batch, clean_logits):  # rank 1's metric raises on its third call
        calls["n"] += 1
        if rank == 1 and calls["n"] == 3:
            raise RuntimeError("rank 1 failed on purpose")
        return (logits[:, -1] - clean_logits[:, -1]).pow(2).sum(-1) * 0 + logits[:, -1, 0]

    try:
        found = discover(model, task, task, "eap", metric=failing, edges=10, curve=True, batch_size=5)
        write_outputs(found, folder / "failed")
    except RankFailure as err:
        (folder / "rank0_failure.txt").write_text(str(err))
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    assert size == 1, "the failing job did not fail"


if __name__ == "__main__":
    main(Path(sys.argv[1]))
