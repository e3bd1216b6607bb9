"""The memory planner's estimates against measured peaks (CPU, random weights, fresh processes).

    python benchmarks/bench_memory.py                    # GPT-2-small and Qwen2.5-0.5B shapes, eap / eap-ig-inputs / curve
    python benchmarks/bench_memory.py --quick            # a 12-layer, 256-wide GPT-2 shape
    python benchmarks/bench_memory.py --shapes gpt2-small --methods exact --batch 8 --tokens 64

How it measures: each (shape, method) runs in a fresh Python process with glibc's mmap threshold
fixed (``MALLOC_MMAP_THRESHOLD_``, so large freed blocks go back to the system at once). The worker
builds the model and the data, runs a tiny warm-up forward (thread pools, kernels), then resets the
kernel's peak-RSS mark (``/proc/self/clear_refs`` = 5, Linux) and reads the current RSS; after the
method it reads the peak (``VmHWM``). ``measured`` = peak - RSS before, i.e. what the method itself
added (the parameters are already resident, so they are left out of the estimate too). Linux only.
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


def _run(model, task, method: str, batch: int, max_rows: int) -> None:
    import torch

    from circuits import PatchRunner, attribute, exact_edge_effects, faithfulness_curve, graph_for
    from circuits.scores import edge_pruning

    if method == "curve":
        g = graph_for(model)
        lay = g.layout  # edges out of the input or into the logits first: every circuit of the curve survives pruning
        signal = (lay.edge_sender == 0) | (lay.edge_receiver == lay.logits_receiver)
        scores = g.with_scores(signal.float() + 0.1 * torch.rand(g.n_edges, generator=torch.Generator().manual_seed(0)))
        runner = PatchRunner(model, task, batch_size=batch, max_rows=max_rows)
        faithfulness_curve(model, scores, task, runner=runner)
    elif method == "exact":
        exact_edge_effects(model, task, batch_size=batch, max_rows=max_rows)
    elif method == "edge-pruning":
        edge_pruning(model, task, target_edges=10, steps=2, batch_size=batch)
    else:
        attribute(model, task, method=method, steps=2, batch_size=batch)


def worker(shape: str, method: str, batch: int, tokens: int, examples: int, max_rows: int, dtype: str) -> dict:
    """Run one method in this process; returns the estimate (parameters excluded) and the measured increase."""
    import ctypes
    import gc

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from circuits.planning import estimate, shape_of

    torch.set_num_threads(1)
    raw = dict(SHAPES[shape])
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype)).eval()
    task = _task(config.vocab_size, examples, tokens)
    _run(model, _task(config.vocab_size, 2, 4), "eap", 2, max_rows)  # warm-up: kernels, thread pools
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    reset_peak_rss()  # the peak-RSS mark starts again from the current RSS
    before = proc_status_bytes("VmRSS")
    _run(model, task, method, batch, max_rows)
    measured = proc_status_bytes("VmHWM") - before
    est = estimate(shape_of(config, dtype), method, tokens, batch, examples, max_rows)
    params = dict((c[0], c[1]) for c in est.components)["parameters"]
    return {"shape": shape, "method": method, "batch": batch, "tokens": tokens, "examples": examples,
            "max_rows": max_rows, "dtype": dtype, "estimate": est.peak - params, "measured": measured}


def measure(shape: str, method: str, batch: int, tokens: int, examples: int, max_rows: int = 512,
            dtype: str = "float32") -> dict:
    """:func:`worker` in a fresh process (fixed mmap threshold), its result."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(
        [shape, method, batch, tokens, examples, max_rows, dtype])]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="the 12-layer, 256-wide GPT-2 shape only")
    p.add_argument("--shapes", nargs="+", default=["gpt2-small", "qwen2.5-0.5b"], choices=list(SHAPES))
    p.add_argument("--methods", nargs="+", default=["eap", "eap-ig-inputs", "curve"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--examples", type=int, default=8)
    p.add_argument("--max-rows", type=int, default=512)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(*json.loads(a.worker))))
        return
    shapes = ["gpt2-quick"] if a.quick else a.shapes
    print("| shape | method | B x P (N) | estimate (MiB) | measured (MiB) | estimate / measured |")
    print("|---|---|---|---|---|---|")
    for shape in shapes:
        for method in a.methods:
            r = measure(shape, method, a.batch, a.tokens, a.examples, a.max_rows, a.dtype)
            print(f"| {shape} | {method} | {a.batch} x {a.tokens} ({a.examples}) | {r['estimate'] / 2**20:.0f} | "
                  f"{r['measured'] / 2**20:.0f} | {r['estimate'] / max(r['measured'], 1):.2f} |", flush=True)


if __name__ == "__main__":
    main()
