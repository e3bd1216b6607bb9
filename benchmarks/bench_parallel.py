"""Speed-up of N torch.distributed processes (gloo, one thread each) over one process.

    python benchmarks/bench_parallel.py [--batch 16 --tokens 32 --edges 256 --nproc 2]

Launches itself under ``torch.distributed.run`` with 1 and with ``--nproc`` processes on a
GPT-2-small-shaped random model (seed 0) and times, in each job: EAP over the batch (data
parallel), and exact single-edge effects of ``--edges`` sampled edges split by data and split by
masks. Prints seconds per job and the speed-up ``t(1) / t(N)``; the target on this 2-core machine
is >= 1.7x for 2 processes. Run it on an idle machine and note the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import gpt2_small, parser, random_batch  # noqa: E402


def _worker(args) -> None:
    import torch

    from circuits.parallel import init_from_env, is_main
    from circuits.patching import PatchRunner, exact_edge_effects
    from circuits.runtime import TracedModel
    from circuits.scores import attribute

    torch.set_num_threads(1)
    init_from_env()
    model = gpt2_small(args.quick)
    tm = TracedModel(model)
    # batches of --chunk examples: the unit data parallelism shares out
    data = [random_batch(model.config.vocab_size, args.chunk, args.tokens, seed=i) for i in range(args.batch // args.chunk)]
    edges = torch.randperm(tm.layout.n_edges, generator=torch.Generator().manual_seed(0))[:args.edges]
    times = {}
    for name, fn in {
        "eap": lambda: attribute(tm, data, "logit_diff", "eap"),
        "exact (data split)": lambda: exact_edge_effects(None, None, edges=edges, runner=PatchRunner(tm, data, "logit_diff")),
        "exact (masks split)": lambda: exact_edge_effects(
            None, None, edges=edges, runner=PatchRunner(tm, data, "logit_diff", parallel="masks")),
    }.items():
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            if torch.distributed.is_initialized():
                torch.distributed.barrier()
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        times[name] = best
    if is_main():
        Path(args.result).write_text(json.dumps(times))


def _launch(n: int, args, result: Path) -> dict[str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port", str(port),
           __file__, "--worker", "--result", str(result), "--batch", str(args.batch), "--tokens", str(args.tokens),
           "--edges", str(args.edges), "--chunk", str(args.chunk), "--repeats", str(args.repeats)]
    cmd += ["--quick"] if args.quick else []
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(result.read_text())


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--edges", type=int, default=256, help="edges of the exact-effects measurement")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--chunk", type=int, default=4, help="examples per batch (the unit data parallelism splits)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", default="", help=argparse.SUPPRESS)
    p.set_defaults(batch=16)
    args = p.parse_args()
    if args.worker:
        return _worker(args)
    import tempfile

    print(f"load average before: {os.getloadavg()[0]:.2f}; GPT-2-small shape{' (quick)' if args.quick else ''}, "
          f"{args.batch} x {args.tokens} tokens, {args.edges} edges, one thread per process, best of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        one = _launch(1, args, Path(tmp) / "one.json")
        many = _launch(args.nproc, args, Path(tmp) / "many.json")
    print(f"{'':22s} {'1 process':>10s} {f'{args.nproc} processes':>12s} {'speed-up':>9s}")
    for name in one:
        print(f"{name:22s} {one[name]:9.2f}s {many[name]:11.2f}s {one[name] / many[name]:8.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
