"""Command-line interface: a thin layer over the Python API.

    circuits discover --model induction-2l --task induction --method eap-ig-inputs --edges 40 --out out/
    circuits evaluate --model induction-2l --task induction --circuit out/circuit.json
    circuits render out/circuit.json --out out/circuit.pdf --merge-qkv
    circuits patch --model induction-2l --task induction --receivers a1.h0<k> --out out/heatmap.png
    circuits tasks | circuits models
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

class UsageError(Exception):
    """A user mistake the CLI reports in one line (exit code 2)."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DISCOVER_OUTPUTS = ("scores.pt", "circuit.json", "circuit.svg", "circuit.png", "curve.png", "curve.svg", "report.json")


# ---------------------------------------------------------------------- shared helpers
def _add_common(p: argparse.ArgumentParser, task_required: bool = False) -> None:
    p.add_argument("--model", required=True, help="zoo model name (see `circuits models`) or a local transformers folder")
    p.add_argument("--task", required=task_required, default=None,
                   help="built-in task (see `circuits tasks`) or a .csv/.jsonl file; default: the zoo model's task")
    p.add_argument("--metric", default=None, help="metric name (default: the task's)")
    p.add_argument("--n-examples", type=int, default=200, help="examples to generate (built-in tasks)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--seed", type=int, default=0, help="seed for data generation and the train/test split")
    p.add_argument("--test-fraction", type=float, default=0.5, help="held-out share of the data for evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _load(args: argparse.Namespace):
    """(model, tokenizer, task, train, test) from the common options."""
    from . import zoo
    from .tasks import TASKS, load_task

    torch.manual_seed(args.seed)
    model, tokenizer = zoo.load(args.model, device=args.device, dtype=DTYPES[args.dtype])
    task_name = args.task
    options: dict[str, Any] = {}
    if task_name is None:
        if args.model not in zoo.MODELS:
            raise UsageError("--task is required for a model that is not in the zoo")
        task_name = zoo.MODELS[args.model].task
    if args.model in zoo.MODELS and task_name in TASKS:
        # the zoo model's token pool etc., for the generator options this task accepts
        accepted = inspect.signature(TASKS[task_name]).parameters
        options = {k: v for k, v in zoo.task_options(args.model).items() if k in accepted}
    if Path(task_name).suffix in (".csv", ".jsonl") and not Path(task_name).exists():
        raise UsageError(f"task file {task_name} does not exist")
    if task_name == "planted":  # a model with a known circuit generates its own task
        from .zoo.planted import planted_task

        task = planted_task(args.model, n=args.n_examples, seed=args.seed)
    else:
        task = load_task(task_name, tokenizer, n=args.n_examples, seed=args.seed, **options)
    if args.metric:
        task.metric = args.metric
    if len(task) < 2:
        raise UsageError(f"task {task_name} has {len(task)} example(s); need at least 2 to split train/test")
    train, test = task.split(args.test_fraction, seed=args.seed)
    return model, tokenizer, task, train, test


def _check_out(out: Path, names: Sequence[str], force: bool) -> None:
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        raise UsageError(f"{out} already holds results ({', '.join(existing)}); pass --force to overwrite them")


def _table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


# ---------------------------------------------------------------------- commands
def cmd_discover(args: argparse.Namespace) -> int:
    from . import prune
    from .attribution import METHODS, attribute
    from .evaluate import evaluate_circuit, faithfulness_curve, plot_curves
    from .io import atomic_path
    from .patching import acdc
    from .render import render

    methods = METHODS + ("acdc",)
    if args.method not in methods:
        raise UsageError(f"unknown method {args.method!r}; valid: {', '.join(methods)}")
    out = Path(args.out)
    _check_out(out, DISCOVER_OUTPUTS, args.force)
    t0 = time.perf_counter()
    model, _, task, train, test = _load(args)
    timings: dict[str, float] = {"load": time.perf_counter() - t0}
    t = time.perf_counter()
    if args.method == "acdc":
        res = acdc(model, train, args.tau, metric=args.metric or "kl_div", batch_size=args.batch_size, progress=not args.quiet)
        graph = res.graph
        graph.meta["acdc_scores"] = True
    else:
        graph = attribute(model, train, args.metric, args.method, steps=args.steps, batch_size=args.batch_size,
                          progress=not args.quiet)
    timings["scoring"] = time.perf_counter() - t
    scores = graph.scores.clone()
    if args.method != "acdc":
        if args.threshold is not None:
            prune.threshold(graph, args.threshold, absolute=not args.signed)
        elif args.prune == "greedy":
            prune.greedy(graph, args.edges, absolute=not args.signed)
        else:
            prune.topn(graph, args.edges, absolute=not args.signed)
    graph.meta.update({"model": args.model, "task": task.name, "method": args.method})
    t = time.perf_counter()
    report = evaluate_circuit(model, graph, test, metric=args.metric, batch_size=args.batch_size)
    timings["evaluation"] = time.perf_counter() - t
    curve = None
    if not args.no_curve:
        t = time.perf_counter()
        curve_graph = graph.copy()
        curve_graph.scores = scores.clone()
        curve = faithfulness_curve(model, curve_graph, test, absolute=not args.signed, metric=args.metric,
                                   batch_size=args.batch_size)
        timings["curve"] = time.perf_counter() - t
    graph.meta["faithfulness"] = report.faithfulness
    report.method, report.model, report.task = args.method, args.model, task.name
    report.curve = curve
    report.timings.update(timings)
    report.settings.update({k: v for k, v in vars(args).items() if k not in ("func",)})
    # write everything, each file atomically
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "scores.pt", overwrite=True) as tmp:
        torch.save({"scores": scores, "edges": graph.edge_names(), "method": args.method}, tmp)
    graph.save_json(out / "circuit.json", overwrite=True)
    diagram_ok = True
    for fmt in ("svg", "png"):
        try:
            render(graph, out / f"circuit.{fmt}", overwrite=True, force=args.force_render)
        except RuntimeError as e:  # no `dot` binary: say so, keep the other outputs
            diagram_ok = False
            print(f"warning: diagram not written: {e}", file=sys.stderr)
            break
    if curve is not None:
        for fmt in ("png", "svg"):
            plot_curves({args.method: curve}, out / f"curve.{fmt}", title=f"{args.model} / {task.name}: faithfulness by circuit size")
    report.timings["total"] = time.perf_counter() - t0
    report.to_json(out / "report.json", overwrite=True)
    rows = [
        ("model", args.model),
        ("task", f"{task.name} ({len(train)} train / {len(test)} test examples)"),
        ("method", args.method),
        ("edges", f"{graph.n_circuit_edges} of {graph.n_edges}"),
        ("nodes", str(len(graph.circuit_nodes()))),
        ("metric", f"{report.metric}: full {report.m_full:.4f}, circuit {report.m_circuit:.4f}, empty {report.m_empty:.4f}"),
        ("faithfulness", f"{report.faithfulness:.3f}"),
    ]
    if curve is not None:
        rows.append((curve.kind, f"{curve.area:.3f}"))
    rows += [("time", f"{report.timings['total']:.1f} s"), ("output", str(out) + ("" if diagram_ok else " (no diagram: install graphviz)"))]
    print(_table(rows))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_circuit
    from .export import load

    graph = load(args.circuit)
    model, _, task, _, test = _load(args)
    report = evaluate_circuit(model, graph, test, metric=args.metric, ablation=args.ablation, batch_size=args.batch_size)
    report.model, report.task = args.model, task.name
    if args.out:
        report.to_json(args.out, overwrite=args.force)
    print(_table([
        ("circuit", f"{args.circuit} ({graph.n_circuit_edges} edges)"),
        ("metric", f"{report.metric}: full {report.m_full:.4f}, circuit {report.m_circuit:.4f}, empty {report.m_empty:.4f}"),
        ("faithfulness", f"{report.faithfulness:.3f}"),
        ("KL to full", f"{report.kl_to_full:.4f}"),
        ("accuracy", f"{report.accuracy:.3f}"),
    ]))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from .export import load, save

    graph = load(args.circuit)
    groups = json.loads(Path(args.groups).read_text()) if args.groups else None
    path = save(graph, args.out, format=args.format, overwrite=args.force, merge_qkv=args.merge_qkv,
                collapse_heads=args.collapse_heads, groups=groups, force=args.force_render)
    print(f"wrote {path}")
    return 0


def cmd_patch(args: argparse.Namespace) -> int:
    from .patching import path_patching_grid

    model, _, task, train, _ = _load(args)
    grid = path_patching_grid(model, train, args.receivers, metric=args.metric, batch_size=args.batch_size,
                              normalize=args.normalize, progress=not args.quiet)
    out = Path(args.out)
    _check_out(out.parent, [out.name], args.force)
    _plot_heatmap(grid, out, title=f"path patching: heads -> {', '.join(args.receivers)} ({task.name})")
    print(f"wrote {out}")
    for layer in range(grid.shape[0]):
        print(f"  L{layer:<3}" + " ".join(f"{v:+8.4f}" if v == v else "     n/a" for v in grid[layer].tolist()))
    return 0


def _plot_heatmap(grid: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_path

    fig, ax = plt.subplots(figsize=(1 + 0.5 * grid.shape[1], 1 + 0.4 * grid.shape[0]))
    lim = float(torch.nan_to_num(grid, nan=0.0).abs().max()) or 1.0
    im = ax.imshow(grid.numpy(), cmap="RdBu", vmin=-lim, vmax=lim, origin="lower")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="metric change")
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=150)
    plt.close(fig)


def cmd_tasks(args: argparse.Namespace) -> int:
    from .tasks import TASKS

    for name, fn in TASKS.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        print(f"  {name:<14} {doc}")
    print("  <file.csv|.jsonl>  your own task: columns clean, corrupted, answer, wrong_answer (see docs/tasks.md)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from . import zoo

    for name in zoo.list_models():
        e = zoo.MODELS[name]
        gt = " [ground truth]" if e.has_ground_truth else ""
        print(f"  {name:<16} task={e.task:<12} {e.description}{gt}")
    print("  <folder>         any local transformers folder (GPT-2, GPT-Neo, GPT-NeoX/Pythia, Llama, Mistral, Qwen2)")
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="circuits",
        description="Discover, evaluate and draw edge-level circuits in transformers language models.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("discover", help="score edges, prune to a circuit, evaluate it, draw it")
    _add_common(d)
    d.add_argument("--method", default="eap-ig-inputs",
                   help="eap, eap-ig-inputs, eap-ig-activations, clean-corrupted, eap-ig-edges, acdc")
    size = d.add_mutually_exclusive_group()
    size.add_argument("--edges", type=int, default=50, help="keep the top N edges (then drop dangling ones)")
    size.add_argument("--threshold", type=float, default=None, help="keep edges with |score| >= T")
    d.add_argument("--prune", choices=("topn", "greedy"), default="topn", help="how --edges picks edges")
    d.add_argument("--signed", action="store_true", help="rank by signed scores instead of |score|")
    d.add_argument("--steps", type=int, default=5, help="integration steps for the IG methods")
    d.add_argument("--tau", type=float, default=0.01, help="ACDC threshold")
    d.add_argument("--no-curve", action="store_true", help="skip the faithfulness curve")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--force", action="store_true", help="overwrite results already in --out")
    d.add_argument("--force-render", action="store_true", help="draw even very large circuits")
    d.set_defaults(func=cmd_discover)

    e = sub.add_parser("evaluate", help="faithfulness of a saved circuit on held-out data")
    _add_common(e)
    e.add_argument("--circuit", required=True, help="circuit file (circuit.json, .graphml, .gexf, .csv)")
    e.add_argument("--ablation", choices=("patching", "mean", "zero"), default="patching")
    e.add_argument("--out", default=None, help="write the report JSON here")
    e.add_argument("--force", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("render", help="re-render or convert a saved circuit")
    r.add_argument("circuit", help="circuit file (circuit.json, .graphml, .gexf, .csv)")
    r.add_argument("--out", required=True, help="output file: .svg .png .pdf .html .dot .json .graphml .gexf .csv")
    r.add_argument("--format", default=None, help="override the format implied by --out's suffix")
    r.add_argument("--merge-qkv", action="store_true", help="one edge per head instead of q/k/v edges")
    r.add_argument("--collapse-heads", action="store_true", help="one node per attention layer")
    r.add_argument("--groups", default=None, help='JSON file {"name movers": ["a9.h9", ...], ...} drawn as clusters')
    r.add_argument("--force", action="store_true", help="overwrite --out")
    r.add_argument("--force-render", action="store_true", help="draw even very large circuits")
    r.set_defaults(func=cmd_render)

    pp = sub.add_parser("patch", help="path patching heatmap: every head -> chosen receivers")
    _add_common(pp)
    pp.add_argument("--receivers", nargs="+", required=True, help="receivers, e.g. 'a9.h9<q>' a10.h0 logits")
    pp.add_argument("--normalize", action="store_true", help="divide by m(clean) - m(corrupted)")
    pp.add_argument("--out", default="path_patching.png")
    pp.add_argument("--force", action="store_true")
    pp.set_defaults(func=cmd_patch)

    sub.add_parser("tasks", help="list built-in tasks").set_defaults(func=cmd_tasks)
    sub.add_parser("models", help="list zoo models").set_defaults(func=cmd_models)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: no partial files were written", file=sys.stderr)
        return 130
    except (UsageError, ValueError, FileNotFoundError, FileExistsError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
