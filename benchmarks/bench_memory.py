"""The memory planner's estimates against measured peaks (CPU, random weights, fresh processes).

    python benchmarks/bench_memory.py                    # GPT-2-small and Qwen2.5-0.5B shapes, eap / eap-ig-inputs / curve
    python benchmarks/bench_memory.py --quick            # a 12-layer, 256-wide GPT-2 shape
    python benchmarks/bench_memory.py --shapes gpt2-small --methods exact --batch 8 --tokens 64

How it measures: one fresh Python process with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``,
so large freed blocks go back to the system at once) builds each shape's model (random weights, seed 0)
and runs a tiny warm-up (thread pools, kernels, lazy initialisation) on one thread; each (shape, method)
then runs in its own forked child, which makes the data (random tokens, seed 0; a curve first gets EAP
scores, as a real run has), resets the kernel's peak-RSS mark (``/proc/self/clear_refs`` = 5) and reads
the current RSS; after the method it reads the peak (``VmHWM``). ``measured`` = peak - RSS before, i.e.
what the method itself added (the parameters are already resident, so they are left out of the
estimate too). Linux only. tests/test_planning_measured.py runs the same comparison on small shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from common import proc_status_bytes, reset_peak_rss  # noqa: E402

SHAPES: dict[str, dict] = {
    "gpt2-small": {"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257},
    "qwen2.5-0.5b": {"model_type": "qwen2", "num_hidden_layers": 24, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "hidden_size": 896, "intermediate_size": 4864, "vocab_size": 151936,
                     "tie_word_embeddings": True},
    "gpt2-quick": {"model_type": "gpt2", "n_layer": 12, "n_head": 4, "n_embd": 256, "vocab_size": 2000},
}


def _task(vocab: int, n: int, tokens: int):
    import torch

    from circuits.tasks import Task

    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, vocab, (n, tokens), generator=g).tolist()
    corr = torch.randint(0, vocab, (n, tokens), generator=g).tolist()
    return Task(name="random", clean=[], corrupted=[], clean_ids=clean, corrupted_ids=corr,
                answers=[[1]] * n, wrong=[[2]] * n, metric="logit_diff", pad_id=0)


def _scores(model, task, method: str, batch: int):
    """What a method reads before its measured part: EAP scores for a curve (as a real run has), else None."""
    from circuits import attribute

    return attribute(model, task, method="eap", batch_size=batch) if method == "curve" else None


def _run(model, task, method: str, batch: int, max_rows: int, scores=None) -> None:
    from circuits import PatchRunner, attribute, exact_edge_effects, faithfulness_curve
    from circuits.scores import edge_pruning

    if method == "curve":
        runner = PatchRunner(model, task, batch_size=batch, max_rows=max_rows)
        faithfulness_curve(model, scores, task, runner=runner)
    elif method == "exact":
        exact_edge_effects(model, task, batch_size=batch, max_rows=max_rows)
    elif method == "edge-pruning":
        edge_pruning(model, task, target_edges=10, steps=2, batch_size=batch)
    else:
        attribute(model, task, method=method, steps=2, batch_size=batch)


def load(shape: str | dict, dtype: str = "float32"):
    """The config and a random-weight model (seed 0, eval mode) of ``shape`` (a name of :data:`SHAPES` or a
    config dict with its ``model_type``), after a tiny warm-up run (kernels, lazy initialisation)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(1)
    raw = dict(SHAPES[shape] if isinstance(shape, str) else shape)
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype)).eval()
    _run(model, _task(config.vocab_size, 2, 4), "eap", 2, 512)  # warm-up: kernels, thread pools
    return config, model


def worker(shape: str | dict, method: str, batch: int, tokens: int, examples: int, max_rows: int, dtype: str,
           loaded=None) -> dict:
    """Run one method in this process; returns the estimate (parameters excluded) and the measured increase.
    ``loaded``: :func:`load`'s result for ``shape`` (built here when None)."""
    import ctypes
    import gc

    from circuits.planning import estimate, shape_of

    config, model = loaded or load(shape, dtype)
    task = _task(config.vocab_size, examples, tokens)
    scores = _scores(model, task, method, batch)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    reset_peak_rss()  # the peak-RSS mark starts again from the current RSS
    before = proc_status_bytes("VmRSS")
    _run(model, task, method, batch, max_rows, scores)
    measured = proc_status_bytes("VmHWM") - before
    est = estimate(shape_of(config, dtype), method, tokens, batch, examples, max_rows, device="cpu")
    params = dict((c[0], c[1]) for c in est.components)["parameters"]
    return {"shape": shape, "method": method, "batch": batch, "tokens": tokens, "examples": examples,
            "max_rows": max_rows, "dtype": dtype, "estimate": est.peak - params, "measured": measured}


def forked(job: list, loaded) -> dict:
    """:func:`worker` of ``job`` in a forked child of this process, which holds the loaded model (a fresh
    peak-RSS mark, without importing torch or building the model again; this process runs torch on one
    thread, so no thread pool has to survive the fork)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, send the result, exit without running the parent's cleanup
        code = 1
        try:
            os.close(r)
            with os.fdopen(w, "w") as out:
                out.write(json.dumps(worker(*job, loaded=loaded)))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as inp:
        text = inp.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not text:
        raise RuntimeError(f"the measurement of {job} failed (wait status {status})")
    return json.loads(text)


def measure_many(jobs: list[list]) -> list[dict]:
    """:func:`worker` of each job (``[shape, method, batch, tokens, examples, max_rows, dtype]``), each in its
    own forked child of one fresh process (fixed mmap threshold) that loads each shape once."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, str(Path(__file__).resolve()), "--jobs", json.dumps(jobs)]
    out = subprocess.run(args, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the measurements failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="the 12-layer, 256-wide GPT-2 shape only")
    p.add_argument("--shapes", nargs="+", default=["gpt2-small", "qwen2.5-0.5b"], choices=list(SHAPES))
    p.add_argument("--methods", nargs="+", default=["eap", "eap-ig-inputs", "curve"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--examples", type=int, default=8)
    p.add_argument("--max-rows", type=int, default=512)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    a = p.parse_args()
    if a.jobs:
        results, models = [], {}
        for job in json.loads(a.jobs):
            key = json.dumps([job[0], job[-1]])
            if key not in models:  # the previous shape's model is freed first
                models.clear()
                models[key] = load(job[0], job[-1])
            results.append(forked(job, models[key]))
        print(json.dumps(results))
        return
    shapes = ["gpt2-quick"] if a.quick else a.shapes
    print("| shape | method | B x P (N) | estimate (MiB) | measured (MiB) | estimate / measured |")
    print("|---|---|---|---|---|---|")
    for shape in shapes:
        jobs = [[shape, method, a.batch, a.tokens, a.examples, a.max_rows, a.dtype] for method in a.methods]
        for r, method in zip(measure_many(jobs), a.methods):
            print(f"| {shape} | {method} | {a.batch} x {a.tokens} ({a.examples}) | {r['estimate'] / 2**20:.0f} | "
                  f"{r['measured'] / 2**20:.0f} | {r['estimate'] / max(r['measured'], 1):.2f} |", flush=True)


if __name__ == "__main__":
    main()
