"""A model a hundred times bigger than the zoo's, end to end on the CPU: Qwen2.5-0.5B's shape.

    python benchmarks/bench_scale.py [--batch 8 --tokens 32 --methods eap eap-ig-inputs curve]

Builds a random-weight model of Qwen2.5-0.5B's shape (24 layers, 14 query / 2 key-value heads,
d 896, vocabulary 151,936; seed 0; 179,749 edges) and runs, each in a fresh process: the bare
forward (+ backward), EAP, EAP-IG-inputs (5 steps) and a MIB faithfulness curve (10 fractions;
scores from EAP). Prints per method the seconds, the ratio to the bare forward+backward (the bare
forward for the curve), and the peak resident memory above the loaded model (VmHWM reset after
loading, after a small warm-up run and with glibc's mmap threshold fixed, as benchmarks/bench_memory.py
measures) next to the memory planner's estimate for the same work (its peak less the parameters).
Run on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import proc_status_bytes, random_batch, reset_peak_rss  # noqa: E402

METHODS = ("bare", "eap", "eap-ig-inputs", "curve")


def qwen25_05b_config():
    """Qwen2.5-0.5B's published shape (config.json of Qwen/Qwen2.5-0.5B), no weights."""
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


def _one(method: str, args) -> dict:
    """Run one method in this process; returns seconds and peak memory above the loaded model."""
    import ctypes
    import gc

    import torch
    from transformers import AutoModelForCausalLM

    from circuits.evaluation import faithfulness_curve
    from circuits.patching import PatchRunner
    from circuits.runtime import TracedModel
    from circuits.scores import attribute

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(qwen25_05b_config(), attn_implementation="sdpa").eval()
    tm = TracedModel(model)
    data = [random_batch(model.config.vocab_size, args.batch, args.tokens)]
    b = data[0]
    warm = [random_batch(model.config.vocab_size, 2, 4, seed=1)]
    attribute(tm, warm, "logit_diff", "eap")  # warm-up: kernels, thread pools, lazy initialisation
    if method == "curve":
        scores = attribute(tm, data, "logit_diff", "eap")
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the scoring freed goes back to the system first
    reset_peak_rss()  # the peak (VmHWM) starts again from the current RSS
    base = proc_status_bytes("VmRSS") / 2**20
    t = time.perf_counter()
    if method == "bare":
        with torch.no_grad():
            model(b.clean, attention_mask=b.attention_mask)
        t_fwd = time.perf_counter() - t
        t = time.perf_counter()
        from circuits.metrics import logit_diff

        (-logit_diff(model(b.clean, attention_mask=b.attention_mask).logits, b).sum()).backward()
        out = {"forward_s": t_fwd, "forward_backward_s": t_fwd + time.perf_counter() - t}
    elif method == "curve":
        runner = PatchRunner(tm, data, "logit_diff", max_rows=args.max_rows)
        crv = faithfulness_curve(tm, scores, data, runner=runner)
        out = {"seconds": time.perf_counter() - t, "area": crv.area}
    else:
        attribute(tm, data, "logit_diff", method, steps=5)
        out = {"seconds": time.perf_counter() - t}
    out["peak_above_model_mb"] = proc_status_bytes("VmHWM") / 2**20 - base
    out["edges"] = tm.layout.n_edges
    return out


def main() -> None:
    from common import parser

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS[1:]), choices=METHODS[1:])
    p.add_argument("--max-rows", type=int, default=512, help="mask x example rows per patched forward (curve)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(_one(args.one, args)))
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}; Qwen2.5-0.5B shape, random weights (seed 0), "
          f"{args.batch} x {args.tokens} tokens, {args.threads} threads")
    results = {}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # large freed blocks go back to the system at once
    for m in ("bare", *args.methods):
        cmd = [sys.executable, __file__, "--one", m, "--batch", str(args.batch), "--tokens", str(args.tokens),
               "--threads", str(args.threads), "--max-rows", str(args.max_rows)]
        results[m] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.splitlines()[-1])
    bare = results.pop("bare")
    print(f"edges: {bare['edges']}; bare forward {bare['forward_s']:.2f} s, forward+backward {bare['forward_backward_s']:.2f} s, "
          f"peak above the model {bare['peak_above_model_mb']:.0f} MB")
    from circuits.planning import estimate, shape_of

    shape = shape_of(qwen25_05b_config())
    print(f"{'method':16s} {'seconds':>8s} {'ratio':>7s} {'peak MB':>8s} {'planner MB':>11s}")
    for m, r in results.items():
        floor = bare["forward_s"] if m == "curve" else bare["forward_backward_s"]
        est = estimate(shape, m, args.tokens, args.batch, args.batch, max_rows=args.max_rows)
        planned = (est.peak - shape.n_params * shape.bytes) / 2**20  # the measurement starts with the model loaded
        print(f"{m:16s} {r['seconds']:8.2f} {r['seconds'] / floor:6.1f}x {r['peak_above_model_mb']:8.0f} {planned:11.0f}"
              + ("  (ratio to the bare forward)" if m == "curve" else ""))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
