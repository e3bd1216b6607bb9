"""The ``circuits`` subcommands: ``cmd_<name>(args) -> exit code``, each checking everything (see
:mod:`circuits.cli.preflight`) before the expensive work."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .errors import UsageError, one_line
from .parser import (
    COMPARE_OUTPUTS,
    DATA_FORMATS,
    DISCOVER_OUTPUTS,
    DRAWING_FORMATS,
    IG_METHODS,
    INSTALL_GRAPHVIZ,
    MAX_DIAGRAM_EDGES,
    MAX_EXPLORER_EDGES,
    MIB_MODELS,
    MIB_TASKS,
    MIN_TRAIN,
    PLOT_FORMATS,
)
from .preflight import (
    Model,
    check_out_file,
    check_out_folder,
    format_of,
    is_planted,
    load_circuit,
    prepare,
    progress,
    read_json_file,
    resolve_discover,
    same_model,
)


def _writes() -> bool:
    """True unless this is a rank other than 0 of a process group (rank 0 alone writes files)."""
    from ..parallel import is_main

    return is_main()


def _table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


# ---------------------------------------------------------------------- commands
def cmd_discover(args: argparse.Namespace) -> int:
    resolve_discover(args)
    out = Path(args.out)
    check_out_folder(out, DISCOVER_OUTPUTS, args.force)
    model = Model(args.model, require_tokenizer=not is_planted(args.model, args.task))
    if args.edges is not None and args.edges > model.layout.n_edges:
        if args.edges_given:
            raise UsageError(f"--edges {args.edges} is more than the {model.layout.n_edges} edges of {args.model}")
        args.edges = model.layout.n_edges  # the default asks for more edges than this small model has
    t0 = time.perf_counter()
    lm, task, train, test = prepare(args, model)
    t_load = time.perf_counter() - t0
    if args.faithfulness is not None and len(train) < MIN_TRAIN:
        raise UsageError(f"--faithfulness needs at least {MIN_TRAIN} training examples to decide a circuit's size; "
                         f"this split has {len(train)}: raise --n-examples or lower --test-fraction")

    from ..pipeline import discover, write_outputs

    progress(args, f"discovering: {args.method} on {len(train)} examples, then evaluation on {len(test)}"
                    + ("" if args.no_curve else " and the faithfulness curve"))
    found = discover(lm, train, test, args.method, metric=args.metric, edges=args.edges, threshold=args.threshold,
                     faithfulness=args.faithfulness, refine=args.refine, rule=args.prune, signed=args.signed,
                     steps=args.steps, tau=args.tau, batch_size=args.batch_size, curve=not args.no_curve,
                     model_name=args.model, progress=not args.quiet, seed=args.seed, parallel=args.parallel,
                     max_rows=args.max_rows, sparse=args.sparse)
    report = found.report
    report.timings.pop("total", None)
    report.timings["load_s"] = round(t_load, 4)
    report.timings["total_s"] = round(time.perf_counter() - t0, 4)
    report.settings.update({
        "model": args.model,
        "task": task.name,
        "task_file": task.meta.get("source_file"),
        "metric": report.metric,
        "n_examples": len(task),
        "n_train": len(train),
        "n_test": len(test),
        "test_fraction": args.test_fraction,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "device": args.device,
        "dtype": args.dtype,
        "tau": args.tau if args.method == "acdc" else None,
        "steps": args.steps if args.method in (*IG_METHODS, "edge-pruning") else None,
        "faithfulness_target": args.faithfulness,
        "refine": args.refine,
        "curve": not args.no_curve,
    })
    if _writes():
        write_outputs(found, out, overwrite=args.force, force_render=args.force_render,
                      title=f"{args.model} / {task.name}: faithfulness by circuit size")
    for note in found.warnings:
        print(f"warning: {one_line(note)}", file=sys.stderr)
    circuit, curve = found.circuit, found.curve
    rows = [
        ("model", args.model),
        ("task", f"{task.name} ({len(train)} train / {len(test)} test examples)"),
        ("method", args.method),
        ("edges", f"{circuit.n_circuit_edges} of {circuit.n_edges}"),
        ("nodes", str(len(circuit.circuit_nodes()))),
        ("metric", f"{report.metric}: full {report.m_full:.4f}, circuit {report.m_circuit:.4f}, empty {report.m_empty:.4f}"),
        ("faithfulness", f"{report.faithfulness:.3f} held out" + _interval(report)),
        ("KL to full", f"{report.kl_to_full:.4f}"),
        ("accuracy", f"{report.accuracy:.3f} (full model {report.accuracy_full:.3f})"),
    ]
    if report.search is not None:
        rows.append(("target", _search_line(report.search)))
    if curve is not None:
        rows.append((curve.kind, f"{curve.area:.3f}"))
    rows += [("time", f"{report.timings['total_s']:.1f} s"),
             ("written", f"{out}: " + ", ".join(f.name for f in found.files))]
    print(_table(rows))
    if report.search is not None and not report.search["target_met"]:
        print(f"target not met: no circuit reached faithfulness {args.faithfulness:g} on the training split; the best "
              f"found (f = {report.search['train_faithfulness']:.3f}, {circuit.n_circuit_edges} edges) is written, with "
              "target_met: false in report.json. Lower --faithfulness or use more examples.", file=sys.stderr)
        return 1
    return 0


def _interval(report) -> str:
    ci = report.faithfulness_ci
    return "" if ci is None else f", 95% interval [{ci[0]:.3f}, {ci[1]:.3f}] over {report.n_examples} examples"


def _search_line(search: dict) -> str:
    s = search
    text = (f"f >= {s['target']:g} on the {s['n_train']} training examples: "
            f"{'met' if s['target_met'] else 'NOT met'} (train f {s['train_faithfulness']:.3f}, {len(s['probes'])} sizes probed)")
    if s.get("refined"):
        text += (f"; refined from {s['edges_before_refinement']} edges, "
                 f"{'1-minimal' if s.get('is_1_minimal') else 'not 1-minimal'}, {s['n_inert']} inert")
    return text


def cmd_evaluate(args: argparse.Namespace) -> int:
    circuit_path = Path(args.circuit)
    if args.out:
        check_out_file(Path(args.out), args.force)
    model = Model(args.model, require_tokenizer=not is_planted(args.model, args.task))
    graph = load_circuit(circuit_path, "--circuit")
    if graph.layout.shape != model.layout.shape:
        L, H, par = graph.layout.shape
        shape = f"{L} layers x {H} heads" + (", parallel attention/MLP" if par else "")
        found_on = f" (found on {graph.provenance.model})" if graph.provenance.model else ""
        raise UsageError(f"--circuit {circuit_path} is for a model of {shape}{found_on}, but --model {args.model} "
                         f"has {model.shape_text()}; evaluate it on the model it was found on")
    if graph.provenance.model and not same_model(graph.provenance.model, args.model) and not args.force:
        raise UsageError(f"--circuit {circuit_path} was found on model {graph.provenance.model!r}, not on --model "
                         f"{args.model!r} (same shape); pass --force to evaluate it on {args.model} anyway")
    lm, task, _, test = prepare(args, model)

    from ..evaluation import evaluate_circuit

    progress(args, f"evaluating {graph.n_circuit_edges} edges on {len(test)} held-out examples ...")
    t0 = time.perf_counter()
    report = evaluate_circuit(lm, graph, test, metric=args.metric, ablation=args.ablation, batch_size=args.batch_size,
                              max_rows=args.max_rows, sparse=args.sparse)
    report.model, report.task = args.model, task.name
    report.timings["total_s"] = round(time.perf_counter() - t0, 4)
    report.settings.update({"model": args.model, "task": task.name, "task_file": task.meta.get("source_file"),
                            "circuit": str(circuit_path), "n_test": len(test), "seed": args.seed,
                            "test_fraction": args.test_fraction, "device": args.device, "dtype": args.dtype})
    rows = [
        ("circuit", f"{args.circuit} ({graph.n_circuit_edges} edges)"),
        ("task", f"{task.name} ({len(test)} test examples)"),
        ("metric", f"{report.metric}: full {report.m_full:.4f}, circuit {report.m_circuit:.4f}, empty {report.m_empty:.4f}"),
        ("faithfulness", f"{report.faithfulness:.3f} held out" + _interval(report)),
        ("KL to full", f"{report.kl_to_full:.4f}"),
        ("accuracy", f"{report.accuracy:.3f} (full model {report.accuracy_full:.3f})"),
    ]
    if args.out and _writes():
        report.to_json(args.out, overwrite=args.force)
        rows.append(("written", str(args.out)))
    print(_table(rows))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    out = Path(args.out)
    fmt = format_of(out, args.format, DATA_FORMATS + DRAWING_FORMATS, "--out")
    drawing_options = [flag for flag, on in (("--merge-qkv", args.merge_qkv), ("--collapse-heads", args.collapse_heads),
                                             ("--groups", args.groups), ("--force-render", args.force_render)) if on]
    if fmt in DATA_FORMATS and drawing_options:
        raise UsageError(f"{drawing_options[0]} only applies to drawings (.svg .png .pdf .html .dot), not to "
                         f"--out {out} ({fmt} data); drop it")
    if args.report is not None and fmt != "html":
        raise UsageError(f"--report only applies to --out .html (the explorer's slider reads its curve), not to "
                         f"--out {out} ({fmt}); drop it")
    graph = load_circuit(args.circuit)
    curve = _explorer_curve(args, graph) if fmt == "html" else None
    if fmt in ("svg", "png", "pdf") and shutil.which("dot") is None:
        raise UsageError(f"drawing --out {out} needs Graphviz's `dot` program, which is not on PATH; install it "
                         f"({INSTALL_GRAPHVIZ}) or write a data file instead (e.g. --out {out.with_suffix('.graphml')})")
    check_out_file(out, args.force)
    groups = read_json_file(Path(args.groups), "--groups") if args.groups else None
    if groups is not None and not (isinstance(groups, dict) and all(isinstance(v, list) for v in groups.values())):
        raise UsageError(f'--groups {args.groups} must hold a JSON object of lists, e.g. {{"name movers": ["a9.h9"]}}')
    limit = MAX_EXPLORER_EDGES if fmt == "html" else MAX_DIAGRAM_EDGES
    if fmt in DRAWING_FORMATS and graph.n_circuit_edges > limit and not args.force_render:
        raise UsageError(f"the circuit in {args.circuit} has {graph.n_circuit_edges} edges, more than "
                         f"{limit}: its {'explorer' if fmt == 'html' else 'diagram'} would be "
                         f"{'slow' if fmt == 'html' else 'unreadable'}; pass --force-render to draw it "
                         f"anyway, or write a data file (e.g. --out {out.with_suffix('.graphml')})")

    from ..render import save

    options: dict[str, Any] = {}
    if fmt in DRAWING_FORMATS:
        options = dict(merge_qkv=args.merge_qkv, collapse_heads=args.collapse_heads, groups=groups, force=True)
    if fmt == "html":
        options["curve"] = curve
    try:
        path = save(graph, out, format=fmt, overwrite=args.force, **options)
    except ValueError as err:
        if groups is not None and "group" in str(err):
            raise UsageError(f"--groups {args.groups}: {err}") from None
        raise
    print(f"wrote {path}" + ("" if fmt != "html" else " (explorer; " + ("no curve" if curve is None else
                                                                       f"curve from {args.report}") + ")"))
    return 0


def _explorer_curve(args: argparse.Namespace, graph: Any) -> Any:
    """The curve the explorer's slider reads: ``--report``'s (checked), else a sibling report.json's
    when it holds a curve of this graph's edge count (sets ``args.report``), else None."""
    from ..evaluation import Curve

    given = args.report is not None
    path = Path(args.report) if given else Path(args.circuit).parent / "report.json"
    if not given and not path.is_file():
        return None
    try:
        data = read_json_file(path, "--report")
    except UsageError as err:
        if given:
            raise
        print(f"warning: {one_line(str(err))}; the explorer shows no curve", file=sys.stderr)
        return None
    found = data.get("curve") if isinstance(data, dict) else None
    try:
        curve = Curve.from_dict(found) if isinstance(found, dict) else None
    except (TypeError, ValueError):
        curve = None
    problem = None
    if curve is None:
        problem = "holds no faithfulness curve (is it a report.json of `circuits discover` without --no-curve?)"
    elif curve.total_edges and curve.total_edges != graph.n_edges:
        problem = f"has a curve over {curve.total_edges} edges, but the circuit's graph has {graph.n_edges}"
    if problem and given:
        raise UsageError(f"--report {path} {problem}; give the report.json of the run that found {args.circuit}")
    if problem:
        print(f"warning: {path} {problem}; the explorer shows no curve", file=sys.stderr)
        return None
    args.report = str(path)
    return curve


def cmd_patch(args: argparse.Namespace) -> int:
    out = Path(args.out)
    format_of(out, None, PLOT_FORMATS, "--out")
    check_out_file(out, args.force)
    model = Model(args.model, require_tokenizer=not is_planted(args.model, args.task))
    layout = model.layout
    receivers = []
    for name in args.receivers:
        try:
            receivers += layout.node_receivers(name)
        except (ValueError, KeyError, IndexError) as err:
            raise UsageError(f"--receivers {name!r}: {one_line(err, 300)}") from None
    heads = [layout.sender_index(f"a{layer}.h{h}") for layer in range(layout.n_layers) for h in range(layout.n_heads)]
    if not bool((layout.edge_table[heads][:, receivers] >= 0).any()):
        raise UsageError(f"--receivers {' '.join(args.receivers)}: no attention head is upstream of them; choose "
                         "receivers in a later layer (e.g. logits)")
    lm, task, train, _ = prepare(args, model)

    from ..patching import path_patching_grid
    from ..render import plot_heatmap

    progress(args, f"path patching {layout.n_layers * layout.n_heads} heads on {len(train)} examples ...")
    grid = path_patching_grid(lm, train, args.receivers, metric=args.metric, batch_size=args.batch_size,
                              normalize=args.normalize, progress=not args.quiet)
    if _writes():
        plot_heatmap(grid, out, title=f"path patching: heads -> {', '.join(args.receivers)} ({task.name})")
    for layer in range(grid.shape[0]):
        print(f"  L{layer:<3}" + " ".join(f"{v:+8.4f}" if v == v else "     n/a" for v in grid[layer].tolist()))
    print(f"wrote {out}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from ..tasks import TASK_INFO

    w = max(len(n) for n in [*TASK_INFO, "planted", "FILE.csv|.jsonl"])
    for name, (_, metric, summary) in TASK_INFO.items():
        print(f"  {name:<{w}}  {summary} [metric: {metric}]")
    print(f"  {'planted':<{w}}  the planted zoo models' own tasks, from token ids (marker_copy, rope_induction)")
    print(f"  {'FILE.csv|.jsonl':<{w}}  your own task: columns clean, corrupted, answer, wrong_answer (docs/tasks.md)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .. import zoo

    w = max(len(n) for n in [*zoo.MODELS, "FOLDER"])
    for name in zoo.list_models():
        e = zoo.MODELS[name]
        gt = " [ground truth]" if e.has_ground_truth else ""
        print(f"  {name:<{w}}  task={e.task:<12} {e.description}{gt}")
    print(f"  {'FOLDER':<{w}}  any local transformers folder (GPT-2, GPT-Neo, GPT-NeoX/Pythia, GPT-J, Llama, "
          "Mistral, Qwen2, Qwen3, Phi-3, Mixtral, Qwen2-MoE, OLMoE, Gemma-2, Gemma-3, OLMo-2)")
    return 0


def cmd_export_mib(args: argparse.Namespace) -> int:
    task = args.task.strip().lower().replace("_", "-")
    if task not in MIB_TASKS:
        raise UsageError(f"--task {args.task}: not a MIB task; MIB's tasks: {', '.join(MIB_TASKS)}")
    if args.model.strip().lower() not in MIB_MODELS:
        raise UsageError(f"--model {args.model}: not a MIB model; MIB's models: {', '.join(MIB_MODELS)}")
    out = Path(args.out)
    check_out_folder(out, [], args.force)  # a folder we can write in
    graph = load_circuit(args.scores)

    from ..render.mib_submission import folder_name, write_submission

    try:
        name = folder_name(task, args.model)
    except ValueError as err:
        raise UsageError(f"--task {args.task} --model {args.model}: {err}") from None
    target = out / name
    if target.is_dir() and any(target.iterdir()) and not args.force:
        raise UsageError(f"--out {out}: {target} already holds files; pass --force to replace its MIB files")
    try:
        files = write_submission(graph, out, task, args.model, "circuits" if args.circuits else "importances",
                                 overwrite=args.force)
    except ValueError as err:
        raise UsageError(f"{args.scores}: {err}") from None
    rows = [("folder", f"{target} ({'nine binary circuits' if args.circuits else 'importance scores'})")]
    rows += [(f.name, f"{n} of {graph.n_edges} edges" if args.circuits else f"{graph.n_edges} edge scores")
             for f, n in files.items()]
    print(_table(rows))
    return 0


def _compare_inputs(args: argparse.Namespace) -> tuple[list[str], int | None]:
    """The circuit files (the reference added first when it is not among them) and the reference's index."""
    files = list(args.circuits)
    if args.reference is not None and args.reference not in files:
        files.insert(0, args.reference)
    if len(files) < 2:
        raise UsageError(f"compare needs at least 2 circuit files, got {len(files)}: {' '.join(files)}")
    twice = sorted({f for f in files if files.count(f) > 1})
    if twice:
        raise UsageError(f"{twice[0]} is given twice; compare distinct circuit files")
    if args.task is not None and args.model is None:
        raise UsageError("--task needs --model (the faithfulness of the intersection and union is measured on it)")
    return files, None if args.reference is None else files.index(args.reference)


def cmd_compare(args: argparse.Namespace) -> int:
    files, ref = _compare_inputs(args)
    out = Path(args.out) if args.out else None
    if out is not None:
        check_out_folder(out, COMPARE_OUTPUTS, args.force)
    graphs = [load_circuit(f) for f in files]
    for f, g in zip(files[1:], graphs[1:]):
        if not g.same_shape(graphs[0]):
            raise UsageError(f"{f} is a circuit of {g.n_layers} layers x {g.n_heads} heads, but {files[0]} is of "
                             f"{graphs[0].n_layers} layers x {graphs[0].n_heads} heads; compare circuits of one model")
    lm = test = None
    if args.model is not None:
        model = Model(args.model, require_tokenizer=not is_planted(args.model, args.task))
        if model.layout.shape != graphs[0].layout.shape:
            raise UsageError(f"--model {args.model} has {model.shape_text()}, but the circuits ({files[0]}, ...) are of "
                             f"{graphs[0].n_layers} layers x {graphs[0].n_heads} heads")
        args.metric, args.test_fraction = None, 0.5
        lm, _, _, test = prepare(args, model)

    from ..evaluation.compare import compare

    progress(args, f"comparing {len(files)} circuits" + ("" if lm is None else f" and evaluating on {len(test)} examples"))
    result = compare(graphs, files, reference=ref, model=lm, data=test, batch_size=args.batch_size)
    notes: list[str] = []
    if out is not None:
        _write_compare(result, graphs, files, out, notes)
    print(result.table())
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    if out is not None:
        print(f"wrote {out}: " + ", ".join(n for n in COMPARE_OUTPUTS if (out / n).exists()))
    return 0


def _write_compare(result: Any, graphs: list, files: list[str], out: Path, notes: list[str]) -> None:
    """compare.json and the diagram into ``out``, all or nothing (staged in a sibling folder)."""
    from ..io import staged_folder
    from ..render.compare import render_compare

    with staged_folder(out) as stage:
        result.to_json(stage / "compare.json")
        if result.n_union > MAX_DIAGRAM_EDGES:
            notes.append(f"diagram skipped: the union has {result.n_union} edges (more than {MAX_DIAGRAM_EDGES})")
        elif shutil.which("dot") is None:
            notes.append(f"diagram skipped: Graphviz's `dot` program is not on PATH ({INSTALL_GRAPHVIZ})")
        else:
            render_compare(graphs, files, stage / "compare.svg")


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the memory estimate of a run (a table of components) from the model's config; exit 1 if it does not fit."""
    from ..planning import MemoryBudgetError, choose, default_budget, estimate, format_bytes, load_config, shape_of
    from ..planning.memory import ATTRIBUTION

    try:
        config = load_config(args.model)
        shape = shape_of(config, args.dtype)
    except (ValueError, NotImplementedError) as err:
        raise UsageError(f"--model {args.model}: {one_line(err, 300)}") from None
    budget = args.max_memory if args.max_memory is not None else default_budget(args.device)
    source = "--max-memory" if args.max_memory is not None else f"free memory of {args.device} less a margin"
    est = estimate(shape, args.method, args.tokens, args.batch, args.examples, device=args.device)
    print(f"{args.model}: {shape.family}, {shape.n_layers} layers x {shape.n_heads} heads (kv {shape.n_kv_heads}), "
          f"d {shape.d_model}, {shape.n_params:,} parameters, {shape.dtype}; {shape.n_edges:,} edges")
    rows = "" if args.method in ATTRIBUTION else f", {est.max_rows} rows per masked forward"
    print(f"{args.method}: batch {est.batch} x {args.tokens} tokens, {est.examples} examples{rows}")
    print(est.table())
    print(f"budget: {format_bytes(budget)} ({source})")
    try:
        plan = choose(shape, args.method, args.tokens, args.batch, budget, args.examples, device=args.device)
    except MemoryBudgetError as err:
        print(f"does not fit: {err}")
        return 1
    fits = plan.batch == est.batch and plan.max_rows == est.max_rows
    print(f"fits: {plan.summary()}" if fits else f"fits with {plan.summary()}")
    return 0
