"""Command-line interface: a thin layer over the Python API.

    circuits discover --model induction-2l --task induction --method eap-ig-inputs --edges 40 --out out/
    circuits evaluate --model induction-2l --task induction --circuit out/circuit.json
    circuits render out/circuit.json --out out/circuit.pdf --merge-qkv
    circuits patch --model induction-2l --task induction --receivers a1.h0<k> --out out/heatmap.png
    circuits tasks | circuits models

Every user mistake ends in one line ``error: ...`` on stderr and exit code 2, found before any
expensive work: the options are checked first, then the output paths, the model folder
(``config.json`` only), the device and the task; the model loads last. The error table is in
docs/errors.md. This module imports neither torch nor transformers at import time, so ``circuits
models``, ``circuits tasks`` and ``--help`` start quickly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence


class UsageError(Exception):
    """A user mistake the CLI reports in one line (exit code 2)."""


# Names, as plain strings so that building the parser does not import torch; tests/test_cli_errors.py
# checks them against circuits.pipeline.DISCOVERY_METHODS, circuits.metrics.METRICS, etc.
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
METHODS: tuple[str, ...] = ("eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "eap-ig-edges", "exact", "acdc")
IG_METHODS: tuple[str, ...] = ("eap-ig-inputs", "eap-ig-activations", "eap-ig-edges")
METRICS: tuple[str, ...] = ("logit_diff", "prob_diff", "kl_div", "answer_logprob", "nll", "accuracy")
ABLATIONS: tuple[str, ...] = ("patching", "mean", "zero")
DISCOVER_OUTPUTS: tuple[str, ...] = ("scores.pt", "circuit.json", "circuit.svg", "circuit.png", "curve.png", "curve.svg",
                                     "report.json")
DATA_FORMATS: tuple[str, ...] = ("json", "graphml", "gexf", "csv")
DRAWING_FORMATS: tuple[str, ...] = ("dot", "svg", "png", "pdf", "html")
LOADABLE: tuple[str, ...] = ("json", "graphml", "gexf", "csv")
SUFFIX_ALIASES: dict[str, str] = {"gv": "dot", "xml": "graphml", "htm": "html"}
PLOT_FORMATS: tuple[str, ...] = ("png", "svg", "pdf")
MAX_DIAGRAM_EDGES = 500
INSTALL_GRAPHVIZ = "apt-get install graphviz, brew install graphviz or conda install -c conda-forge graphviz"
DEFAULTS = {"n_examples": 200, "edges": 50, "prune": "topn", "steps": 5, "tau": 0.01}
"""Defaults of options whose parser default is None (so that giving them explicitly can be told apart)."""


# ---------------------------------------------------------------------- argument types
def _int_type(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if lo is not None and value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi}, got {value}")
        return value

    return parse


def _float_type(lo: float | None = None, lo_open: bool = False, hi_open: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise argparse.ArgumentTypeError(f"must be {'above' if lo_open else 'at least'} {lo:g}, got {value:g}")
        if hi_open is not None and value >= hi_open:
            raise argparse.ArgumentTypeError(f"must be below {hi_open:g}, got {value:g}")
        return value

    return parse


# ---------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line ``error: ...`` (raised, so that :func:`main` can return 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs keep their line breaks; every option shows its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default is argparse.SUPPRESS
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        if action.required:
            return f"{text} (required)"
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None:
            return text
        return f"{text} (default: %(default)s)"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME|FOLDER",
                   help="zoo model name (see `circuits models`) or a local transformers folder")
    p.add_argument("--task", default=None, metavar="NAME|FILE",
                   help="built-in task (see `circuits tasks`) or a .csv/.jsonl file (default: the zoo model's task)")
    p.add_argument("--metric", default=None, choices=METRICS, metavar="NAME",
                   help=f"metric: {', '.join(METRICS)} (default: the task's metric)")
    p.add_argument("--n-examples", type=_int_type(2), default=None, metavar="N",
                   help=f"examples to generate for a built-in task, or the first N rows of a task file "
                        f"(default: {DEFAULTS['n_examples']} for a built-in task, every row of a file)")
    p.add_argument("--batch-size", type=_int_type(1), default=32, metavar="N", help="examples per forward pass")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="model precision")
    p.add_argument("--seed", type=_int_type(0, 2**63 - 1), default=0, metavar="N",
                   help="seed for data generation and the train/test split")
    p.add_argument("--test-fraction", type=_float_type(0.0, lo_open=True, hi_open=1.0), default=0.5, metavar="F",
                   help="held-out share of the examples, used for evaluation (between 0 and 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(
        prog="circuits",
        formatter_class=_Formatter,
        description="Discover, evaluate and draw edge-level circuits in transformers language models.",
        epilog=_examples(
            "circuits models                                   # the shipped models",
            "circuits discover --model induction-2l --out runs/induction",
            "circuits discover --help                          # options of one command",
        ) + "\n\nRun without a command, circuits prints this help and exits with code 2.",
    )
    p.add_argument("--version", action="version", version=f"circuits {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str, epilog: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                              formatter_class=_Formatter, epilog=epilog)

    d = command("discover", "score edges, prune to a circuit, evaluate it, draw it", _examples(
        "circuits discover --model induction-2l --out runs/induction",
        "circuits discover --model stories260k --task pronoun --method eap --edges 100 --out runs/pronoun",
        "circuits discover --model ./my-gpt2 --task my_task.csv --method acdc --tau 0.02 --out runs/acdc",
    ))
    _add_common(d)
    d.add_argument("--method", default="eap-ig-inputs", choices=METHODS, metavar="NAME",
                   help=f"scoring method: {', '.join(METHODS)}")
    size = d.add_mutually_exclusive_group()
    size.add_argument("--edges", type=_int_type(0), default=None, metavar="N",
                      help=f"keep the top N edges, then drop dangling ones (default: {DEFAULTS['edges']}; not with acdc)")
    size.add_argument("--threshold", type=_float_type(), default=None, metavar="T",
                      help="keep the edges with |score| >= T instead of a fixed number (default: unused; not with acdc)")
    d.add_argument("--prune", choices=("topn", "greedy"), default=None,
                   help="how --edges picks the edges (default: topn; not with --threshold or acdc)")
    d.add_argument("--signed", action="store_true", help="rank by signed scores instead of |score| (not with acdc)")
    d.add_argument("--steps", type=_int_type(1), default=None, metavar="N",
                   help=f"integration steps of the IG methods {', '.join(IG_METHODS)} (default: {DEFAULTS['steps']})")
    d.add_argument("--tau", type=_float_type(0.0), default=None, metavar="T",
                   help=f"ACDC's threshold, only with --method acdc (default: {DEFAULTS['tau']})")
    d.add_argument("--no-curve", action="store_true", help="skip the faithfulness curve")
    d.add_argument("--out", required=True, metavar="FOLDER", help="output folder (written all or nothing)")
    d.add_argument("--force", action="store_true", help="overwrite results already in --out")
    d.add_argument("--force-render", action="store_true",
                   help=f"draw circuits of more than {MAX_DIAGRAM_EDGES} edges too")
    d.set_defaults(func=cmd_discover)

    e = command("evaluate", "faithfulness of a saved circuit on held-out data", _examples(
        "circuits evaluate --model induction-2l --circuit runs/induction/circuit.json",
        "circuits evaluate --model induction-2l --circuit c.json --ablation mean --out report.json",
        "circuits evaluate --model ./my-gpt2 --task my_task.jsonl --circuit c.graphml --force",
    ))
    _add_common(e)
    e.add_argument("--circuit", required=True, metavar="FILE",
                   help="circuit file (circuit.json, .graphml, .gexf, .csv)")
    e.add_argument("--ablation", choices=ABLATIONS, default="patching",
                   help="what replaces the edges outside the circuit")
    e.add_argument("--out", default=None, metavar="FILE", help="write the report JSON here (default: print only)")
    e.add_argument("--force", action="store_true",
                   help="overwrite --out, and evaluate a circuit found on a model of another name")
    e.set_defaults(func=cmd_evaluate)

    r = command("render", "redraw a saved circuit, or convert it to another format", _examples(
        "circuits render runs/induction/circuit.json --out circuit.svg --merge-qkv",
        "circuits render circuit.json --out circuit.graphml      # for Gephi/Cytoscape; no Graphviz needed",
        "circuits render circuit.json --out heads.pdf --collapse-heads --groups groups.json",
    ))
    r.add_argument("circuit", metavar="FILE", help="circuit file (circuit.json, .graphml, .gexf, .csv)")
    r.add_argument("--out", required=True, metavar="FILE",
                   help="output file: .svg .png .pdf .html .dot (drawings) or .json .graphml .gexf .csv (data)")
    r.add_argument("--format", default=None, choices=DATA_FORMATS + DRAWING_FORMATS,
                   help="format to write (default: from --out's suffix)")
    r.add_argument("--merge-qkv", action="store_true", help="one edge per head instead of q/k/v edges (drawings only)")
    r.add_argument("--collapse-heads", action="store_true", help="one node per attention layer (drawings only)")
    r.add_argument("--groups", default=None, metavar="FILE",
                   help='JSON file {"name movers": ["a9.h9", ...], ...} drawn as clusters (drawings only; default: none)')
    r.add_argument("--force", action="store_true", help="overwrite --out")
    r.add_argument("--force-render", action="store_true",
                   help=f"draw circuits of more than {MAX_DIAGRAM_EDGES} edges too")
    r.set_defaults(func=cmd_render)

    pp = command("patch", "path patching heatmap: every head -> chosen receivers", _examples(
        "circuits patch --model induction-2l --receivers 'a1.h0<k>' --out heatmap.png",
        "circuits patch --model ioi-3l --receivers logits --normalize --out ioi_logits.svg",
    ))
    _add_common(pp)
    pp.add_argument("--receivers", nargs="+", required=True, metavar="NODE",
                    help="receivers, e.g. 'a9.h9<q>' a10.h0 m3 logits")
    pp.add_argument("--normalize", action="store_true", help="divide by m(clean) - m(corrupted)")
    pp.add_argument("--out", default="path_patching.png", metavar="FILE", help="heatmap file (.png .svg .pdf)")
    pp.add_argument("--force", action="store_true", help="overwrite --out")
    pp.set_defaults(func=cmd_patch)

    command("tasks", "list the built-in tasks", _examples("circuits tasks")).set_defaults(func=cmd_tasks)
    command("models", "list the zoo models", _examples("circuits models")).set_defaults(func=cmd_models)
    return p


# ---------------------------------------------------------------------- preflight checks (no heavy work)
def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable_parent(path: Path, flag: str) -> None:
    """Raise unless ``path`` (file or folder, existing or not) can be created under its nearest existing folder."""
    base = _nearest_existing(path.parent if path.exists() else path)
    if base == path.absolute():
        base = base.parent
    if not base.is_dir():
        raise UsageError(f"{flag} {path}: {base} is a file, not a folder; choose another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: no permission to write in {base}; choose a folder you can write to")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write in {base} ({err.strerror or err}); choose another folder") from None


def _check_out_folder(out: Path, names: Sequence[str], force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose a folder path")
    _check_writable_parent(out, "--out")
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        raise UsageError(f"--out {out} already holds results ({', '.join(existing)}); pass --force to overwrite them")


def _check_out_file(out: Path, force: bool, flag: str = "--out") -> None:
    if out.is_dir():
        raise UsageError(f"{flag} {out} is a folder; give a file path")
    _check_writable_parent(out, flag)
    if out.exists() and not force:
        raise UsageError(f"{flag} {out} already exists; pass --force to overwrite it")


def _format_of(path: str | Path, given: str | None, valid: Sequence[str], flag: str, action: str = "write") -> str:
    suffix = Path(path).suffix.lstrip(".").lower()
    fmt = given or SUFFIX_ALIASES.get(suffix, suffix)
    if not fmt:
        raise UsageError(f"{flag} {path} has no suffix; end it in one of {', '.join('.' + f for f in valid)}")
    if fmt not in valid:
        raise UsageError(f"{flag} {path}: cannot {action} {fmt!r} files; use one of {', '.join('.' + f for f in valid)}")
    return fmt


def _check_device(device: str) -> None:
    import torch

    available = ["cpu"]
    if torch.cuda.is_available():
        available += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        available.append("mps")
    hint = f"available here: {', '.join(available)}"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device {device!r} is not a device; {hint}") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)")
            raise UsageError(f"--device {device}: {why} (torch {torch.__version__}); {hint}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s); {hint}")
        return
    if dev.type == "mps":
        if "mps" not in available:
            raise UsageError(f"--device mps: Apple's MPS backend is not available here (it needs macOS on Apple "
                             f"silicon and a torch build with MPS); {hint}")
        return
    raise UsageError(f"--device {device}: circuits runs on cpu, cuda or mps; {hint}")


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Model:
    """A checked model spec: its folder, raw config and edge graph, all from ``config.json``."""

    def __init__(self, spec: str, require_tokenizer: bool):
        from . import zoo

        self.spec = spec
        self.is_zoo = spec.lower() in zoo.MODELS
        self.entry = zoo.MODELS[spec.lower()] if self.is_zoo else None
        try:
            check = zoo.check_folder(spec, require_tokenizer=require_tokenizer)
        except ValueError as err:
            raise UsageError(f"--model: {err}") from None
        self.folder, self.raw_config, self.has_tokenizer = check.path, check.config, check.has_tokenizer
        self._layout = None

    @property
    def layout(self) -> Any:
        """The model's edge layout, from its config (no weights are loaded)."""
        if self._layout is None:
            from transformers import AutoConfig

            from .models import graph_for

            try:
                config = AutoConfig.from_pretrained(str(self.folder), local_files_only=True)
                self._layout = graph_for(config).layout
            except (OSError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError) as err:
                raise UsageError(f"--model {self.spec}: cannot read {self.folder / 'config.json'} "
                                 f"({_one_line(err, 200)})") from None
        return self._layout

    def shape_text(self) -> str:
        L, H, parallel = self.layout.shape
        return f"{L} layers x {H} heads" + (", parallel attention/MLP" if parallel else "")

    def load_tokenizer(self) -> Any:
        from . import zoo

        try:
            return zoo.load_tokenizer(self.folder)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UsageError(f"--model {self.spec}: cannot load its tokenizer ({_one_line(err, 200)})") from None

    def load(self, device: str, dtype: str) -> Any:
        from . import zoo

        try:
            return zoo.load_model(self.folder, device=device, dtype=dtype)
        except Exception as err:  # only the failures of reading the files are user mistakes
            if not (isinstance(err, (OSError, ValueError, KeyError, RuntimeError)) or "Safetensor" in type(err).__name__):
                raise
            raise UsageError(f"--model {self.spec}: cannot load the weights in {self.folder} "
                             f"({_one_line(err, 200)}); is the folder complete and does config.json match them?") from None


def _task_spec(args: argparse.Namespace, model: _Model) -> tuple[str, Path | None]:
    """(task name, task file or None), checked without loading anything."""
    from .tasks import TASK_INFO

    name = args.task
    if name is None:
        if model.entry is None:
            raise UsageError(f"--task is required for --model {args.model} (not a zoo model): a built-in task "
                             f"({', '.join(TASK_INFO)}) or a .csv/.jsonl file")
        name = model.entry.task
    if name == "planted":
        if model.entry is None or model.entry.task != "planted":
            raise UsageError("--task planted only works with the planted zoo models (marker_copy, rope_induction)")
        return name, None
    canonical = name.strip().lower().replace("_", "-")
    if canonical in TASK_INFO:
        return canonical, None
    path = Path(name)
    if path.suffix.lower() in (".csv", ".jsonl"):
        if not path.exists():
            raise UsageError(f"--task {name}: no such file")
        if not path.is_file():
            raise UsageError(f"--task {name} is a folder; give a .csv or .jsonl file")
        return path.stem, path
    if path.exists():
        raise UsageError(f"--task {name}: a task file must end in .csv or .jsonl")
    raise UsageError(f"unknown --task {name!r}; built-in tasks: {', '.join(TASK_INFO)} (or a .csv/.jsonl file)")


def _progress(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


_RESTORE: list[Callable[[], None]] = []
"""Undo steps for global state changed during one :func:`main` call (run at its end)."""


def _quiet_transformers(quiet: bool) -> None:
    """With ``--quiet``, silence transformers' progress bars ("Loading weights") and warnings for this run."""
    if not quiet:
        return
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    def restore() -> None:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

    _RESTORE.append(restore)


def _prepare(args: argparse.Namespace, model: _Model) -> tuple[Any, Any, Any, Any]:
    """(model, task, train, test): checks the task and the split, then loads the model (the expensive part)."""
    import torch

    from . import zoo
    from .tasks import load_task

    task_name, task_file = _task_spec(args, model)
    _check_device(args.device)
    _quiet_transformers(args.quiet)
    torch.manual_seed(args.seed)
    if task_name == "planted":  # a planted model generates its own task from token ids
        from .zoo.planted import planted_task

        task = planted_task(model.entry.name, n=args.n_examples or DEFAULTS["n_examples"], seed=args.seed)
    else:
        tokenizer = model.load_tokenizer()
        options: dict[str, Any] = {}
        if model.entry is not None and task_file is None:
            # the zoo model's options (BOS, token pool) that this task's generator accepts
            import inspect

            from .tasks import TASKS

            try:
                zoo_options = zoo.task_options(model.entry.name, task_name)
            except ValueError:  # no token pool for this task: the generator's default pool
                zoo_options = {"prepend_bos": True}
            accepted = inspect.signature(TASKS[task_name]).parameters
            options = {k: v for k, v in zoo_options.items() if k in accepted}
        if model.entry is not None and task_file is not None:
            options = {"prepend_bos": True}  # every zoo model expects a BOS token first
        if task_file is not None:
            task = load_task(task_file, tokenizer, **options)
            if args.n_examples is not None:
                if args.n_examples > len(task):
                    raise UsageError(f"--n-examples {args.n_examples} is more than the {len(task)} rows of {task_file}; "
                                     "drop --n-examples to use every row")
                task = task.subset(args.n_examples)
        else:
            try:
                task = load_task(task_name, tokenizer, n=args.n_examples or DEFAULTS["n_examples"], seed=args.seed,
                                 **options)
            except ValueError as err:
                raise UsageError(f"--task {task_name} cannot be built for --model {args.model}: {err}") from None
    if args.metric:
        task.metric = args.metric
    n_test = round(len(task) * args.test_fraction)
    if len(task) < 2 or n_test == 0 or n_test == len(task):
        src = f"{task_file}" if task_file is not None else f"task {task_name}"
        raise UsageError(f"{src} has {len(task)} example(s): --test-fraction {args.test_fraction:g} leaves "
                         f"{'no test' if n_test == 0 else 'no training'} example; use more examples (--n-examples) "
                         "or another --test-fraction")
    train, test = task.split(args.test_fraction, seed=args.seed)
    task.meta["source_file"] = str(task_file) if task_file is not None else None
    _progress(args, f"loading {args.model} ...")
    return model.load(args.device, args.dtype), task, train, test


def _table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


def _resolve_discover(args: argparse.Namespace) -> None:
    """Refuse options the chosen method ignores; fill in the defaults of the others."""
    m = args.method
    given = {flag: value for flag, value in (("--edges", args.edges), ("--threshold", args.threshold),
                                              ("--prune", args.prune), ("--signed", args.signed or None),
                                              ("--steps", args.steps), ("--tau", args.tau)) if value is not None}
    if m == "acdc":
        for flag in ("--edges", "--threshold", "--prune", "--signed"):
            if flag in given:
                raise UsageError(f"{flag} does not apply to --method acdc, which chooses its own circuit (set its "
                                 "size with --tau); drop it or choose another --method")
    elif "--tau" in given:
        raise UsageError(f"--tau only applies to --method acdc (you chose {m}); drop --tau or use --method acdc")
    if "--steps" in given and m not in IG_METHODS:
        raise UsageError(f"--steps only applies to the integrated-gradients methods ({', '.join(IG_METHODS)}); "
                         f"--method {m} takes no steps")
    if "--prune" in given and "--threshold" in given:
        raise UsageError("--prune only applies with --edges, not with --threshold; drop one of them")
    args.tau = DEFAULTS["tau"] if args.tau is None else args.tau
    args.steps = DEFAULTS["steps"] if args.steps is None else args.steps
    args.prune = DEFAULTS["prune"] if args.prune is None else args.prune
    args.edges_given = args.edges is not None
    if m == "acdc":
        args.edges = args.threshold = None
    elif args.threshold is None and args.edges is None:
        args.edges = DEFAULTS["edges"]


# ---------------------------------------------------------------------- commands
def cmd_discover(args: argparse.Namespace) -> int:
    _resolve_discover(args)
    out = Path(args.out)
    _check_out_folder(out, DISCOVER_OUTPUTS, args.force)
    model = _Model(args.model, require_tokenizer=not _is_planted(args.model, args.task))
    if args.edges is not None and args.edges > model.layout.n_edges:
        if args.edges_given:
            raise UsageError(f"--edges {args.edges} is more than the {model.layout.n_edges} edges of {args.model}")
        args.edges = model.layout.n_edges  # the default asks for more edges than this small model has
    t0 = time.perf_counter()
    lm, task, train, test = _prepare(args, model)
    t_load = time.perf_counter() - t0

    from .pipeline import discover, write_outputs

    _progress(args, f"discovering: {args.method} on {len(train)} examples, then evaluation on {len(test)}"
                    + ("" if args.no_curve else " and the faithfulness curve"))
    found = discover(lm, train, test, args.method, metric=args.metric, edges=args.edges, threshold=args.threshold,
                     rule=args.prune, signed=args.signed, steps=args.steps, tau=args.tau, batch_size=args.batch_size,
                     curve=not args.no_curve, model_name=args.model, progress=not args.quiet)
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
        "steps": args.steps if args.method in IG_METHODS else None,
        "curve": not args.no_curve,
    })
    write_outputs(found, out, overwrite=args.force, force_render=args.force_render,
                  title=f"{args.model} / {task.name}: faithfulness by circuit size")
    for note in found.warnings:
        print(f"warning: {_one_line(note)}", file=sys.stderr)
    circuit, curve = found.circuit, found.curve
    rows = [
        ("model", args.model),
        ("task", f"{task.name} ({len(train)} train / {len(test)} test examples)"),
        ("method", args.method),
        ("edges", f"{circuit.n_circuit_edges} of {circuit.n_edges}"),
        ("nodes", str(len(circuit.circuit_nodes()))),
        ("metric", f"{report.metric}: full {report.m_full:.4f}, circuit {report.m_circuit:.4f}, empty {report.m_empty:.4f}"),
        ("faithfulness", f"{report.faithfulness:.3f}"),
        ("KL to full", f"{report.kl_to_full:.4f}"),
        ("accuracy", f"{report.accuracy:.3f} (full model {report.accuracy_full:.3f})"),
    ]
    if curve is not None:
        rows.append((curve.kind, f"{curve.area:.3f}"))
    rows += [("time", f"{report.timings['total_s']:.1f} s"),
             ("written", f"{out}: " + ", ".join(f.name for f in found.files))]
    print(_table(rows))
    return 0


def _is_planted(model: str, task: str | None) -> bool:
    from . import zoo

    entry = zoo.MODELS.get(model.lower())
    return task in (None, "planted") and entry is not None and entry.task == "planted"


def _read_json_file(path: Path, flag: str) -> Any:
    if not path.exists():
        raise UsageError(f"{flag} {path}: no such file")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file")
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise UsageError(f"{flag} {path} is not UTF-8 text; save it as UTF-8 JSON") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{flag} {path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None


def _load_circuit(path: str | Path, flag: str = "") -> Any:
    """A saved circuit; any problem with the file is one line naming it."""
    import xml.etree.ElementTree as ET

    from .render import load

    path = Path(path)
    name = f"{flag} {path}".strip()
    if not path.exists():
        raise UsageError(f"{name}: no such file")
    if path.is_dir():
        raise UsageError(f"{name} is a folder; give a circuit file (circuit.json, .graphml, .gexf, .csv)")
    fmt = _format_of(path, None, LOADABLE, flag or "circuit file", "read")
    if path.stat().st_size == 0:
        raise UsageError(f"{path} is not a valid circuit file (it is empty)")
    try:
        return load(path, format=fmt)
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a valid circuit file (not UTF-8 text)") from None
    except json.JSONDecodeError as err:
        what = "truncated JSON" if err.pos >= len(err.doc.rstrip()) else f"invalid JSON: {err.msg} at line {err.lineno}"
        raise UsageError(f"{path} is not a valid circuit file ({what})") from None
    except ET.ParseError as err:
        raise UsageError(f"{path} is not a valid circuit file (invalid XML: {err})") from None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        reason = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
        reason = re.sub(r"^(not a valid circuits graph file|not a circuits graph file)(: )?", "", reason).strip(" :")
        raise UsageError(f"{path} is not a valid circuit file ({_one_line(reason or 'unexpected content', 200)})") from None
    except Exception as err:  # networkx raises its own errors on malformed GraphML/GEXF
        if type(err).__module__.startswith("networkx"):
            raise UsageError(f"{path} is not a valid circuit file ({_one_line(err, 200)})") from None
        raise


def cmd_evaluate(args: argparse.Namespace) -> int:
    circuit_path = Path(args.circuit)
    if args.out:
        _check_out_file(Path(args.out), args.force)
    model = _Model(args.model, require_tokenizer=not _is_planted(args.model, args.task))
    graph = _load_circuit(circuit_path, "--circuit")
    if graph.layout.shape != model.layout.shape:
        L, H, par = graph.layout.shape
        shape = f"{L} layers x {H} heads" + (", parallel attention/MLP" if par else "")
        found_on = f" (found on {graph.provenance.model})" if graph.provenance.model else ""
        raise UsageError(f"--circuit {circuit_path} is for a model of {shape}{found_on}, but --model {args.model} "
                         f"has {model.shape_text()}; evaluate it on the model it was found on")
    if graph.provenance.model and not _same_model(graph.provenance.model, args.model) and not args.force:
        raise UsageError(f"--circuit {circuit_path} was found on model {graph.provenance.model!r}, not on --model "
                         f"{args.model!r} (same shape); pass --force to evaluate it on {args.model} anyway")
    lm, task, _, test = _prepare(args, model)

    from .evaluation import evaluate_circuit

    _progress(args, f"evaluating {graph.n_circuit_edges} edges on {len(test)} held-out examples ...")
    t0 = time.perf_counter()
    report = evaluate_circuit(lm, graph, test, metric=args.metric, ablation=args.ablation, batch_size=args.batch_size)
    report.model, report.task = args.model, task.name
    report.timings["total_s"] = round(time.perf_counter() - t0, 4)
    report.settings.update({"model": args.model, "task": task.name, "task_file": task.meta.get("source_file"),
                            "circuit": str(circuit_path), "n_test": len(test), "seed": args.seed,
                            "test_fraction": args.test_fraction, "device": args.device, "dtype": args.dtype})
    rows = [
        ("circuit", f"{args.circuit} ({graph.n_circuit_edges} edges)"),
        ("task", f"{task.name} ({len(test)} test examples)"),
        ("metric", f"{report.metric}: full {report.m_full:.4f}, circuit {report.m_circuit:.4f}, empty {report.m_empty:.4f}"),
        ("faithfulness", f"{report.faithfulness:.3f}"),
        ("KL to full", f"{report.kl_to_full:.4f}"),
        ("accuracy", f"{report.accuracy:.3f} (full model {report.accuracy_full:.3f})"),
    ]
    if args.out:
        report.to_json(args.out, overwrite=args.force)
        rows.append(("written", str(args.out)))
    print(_table(rows))
    return 0


def _same_model(recorded: str, given: str) -> bool:
    if recorded == given:
        return True
    from . import zoo

    try:
        return zoo.model_path(recorded).resolve() == zoo.model_path(given).resolve()
    except (ValueError, OSError):
        return recorded.strip().lower() == given.strip().lower()


def cmd_render(args: argparse.Namespace) -> int:
    out = Path(args.out)
    fmt = _format_of(out, args.format, DATA_FORMATS + DRAWING_FORMATS, "--out")
    drawing_options = [flag for flag, on in (("--merge-qkv", args.merge_qkv), ("--collapse-heads", args.collapse_heads),
                                             ("--groups", args.groups), ("--force-render", args.force_render)) if on]
    if fmt in DATA_FORMATS and drawing_options:
        raise UsageError(f"{drawing_options[0]} only applies to drawings (.svg .png .pdf .html .dot), not to "
                         f"--out {out} ({fmt} data); drop it")
    graph = _load_circuit(args.circuit)
    if fmt in ("svg", "png", "pdf", "html") and shutil.which("dot") is None:
        raise UsageError(f"drawing --out {out} needs Graphviz's `dot` program, which is not on PATH; install it "
                         f"({INSTALL_GRAPHVIZ}) or write a data file instead (e.g. --out {out.with_suffix('.graphml')})")
    _check_out_file(out, args.force)
    groups = _read_json_file(Path(args.groups), "--groups") if args.groups else None
    if groups is not None and not (isinstance(groups, dict) and all(isinstance(v, list) for v in groups.values())):
        raise UsageError(f'--groups {args.groups} must hold a JSON object of lists, e.g. {{"name movers": ["a9.h9"]}}')
    if fmt in DRAWING_FORMATS and graph.n_circuit_edges > MAX_DIAGRAM_EDGES and not args.force_render:
        raise UsageError(f"the circuit in {args.circuit} has {graph.n_circuit_edges} edges, more than "
                         f"{MAX_DIAGRAM_EDGES}: its diagram would be unreadable; pass --force-render to draw it "
                         f"anyway, or write a data file (e.g. --out {out.with_suffix('.graphml')})")

    from .render import save

    options: dict[str, Any] = {}
    if fmt in DRAWING_FORMATS:
        options = dict(merge_qkv=args.merge_qkv, collapse_heads=args.collapse_heads, groups=groups, force=True)
    try:
        path = save(graph, out, format=fmt, overwrite=args.force, **options)
    except ValueError as err:
        if groups is not None and "group" in str(err):
            raise UsageError(f"--groups {args.groups}: {err}") from None
        raise
    print(f"wrote {path}")
    return 0


def cmd_patch(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _format_of(out, None, PLOT_FORMATS, "--out")
    _check_out_file(out, args.force)
    model = _Model(args.model, require_tokenizer=not _is_planted(args.model, args.task))
    layout = model.layout
    receivers = []
    for name in args.receivers:
        try:
            receivers += layout.node_receivers(name)
        except (ValueError, KeyError, IndexError) as err:
            raise UsageError(f"--receivers {name!r}: {_one_line(err, 300)}") from None
    heads = [layout.sender_index(f"a{layer}.h{h}") for layer in range(layout.n_layers) for h in range(layout.n_heads)]
    if not bool((layout.edge_table[heads][:, receivers] >= 0).any()):
        raise UsageError(f"--receivers {' '.join(args.receivers)}: no attention head is upstream of them; choose "
                         "receivers in a later layer (e.g. logits)")
    lm, task, train, _ = _prepare(args, model)

    from .patching import path_patching_grid
    from .render import plot_heatmap

    _progress(args, f"path patching {layout.n_layers * layout.n_heads} heads on {len(train)} examples ...")
    grid = path_patching_grid(lm, train, args.receivers, metric=args.metric, batch_size=args.batch_size,
                              normalize=args.normalize, progress=not args.quiet)
    plot_heatmap(grid, out, title=f"path patching: heads -> {', '.join(args.receivers)} ({task.name})")
    for layer in range(grid.shape[0]):
        print(f"  L{layer:<3}" + " ".join(f"{v:+8.4f}" if v == v else "     n/a" for v in grid[layer].tolist()))
    print(f"wrote {out}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from .tasks import TASK_INFO

    w = max(len(n) for n in [*TASK_INFO, "planted", "FILE.csv|.jsonl"])
    for name, (_, metric, summary) in TASK_INFO.items():
        print(f"  {name:<{w}}  {summary} [metric: {metric}]")
    print(f"  {'planted':<{w}}  the planted zoo models' own tasks, from token ids (marker_copy, rope_induction)")
    print(f"  {'FILE.csv|.jsonl':<{w}}  your own task: columns clean, corrupted, answer, wrong_answer (docs/tasks.md)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from . import zoo

    w = max(len(n) for n in [*zoo.MODELS, "FOLDER"])
    for name in zoo.list_models():
        e = zoo.MODELS[name]
        gt = " [ground truth]" if e.has_ground_truth else ""
        print(f"  {name:<{w}}  task={e.task:<12} {e.description}{gt}")
    print(f"  {'FOLDER':<{w}}  any local transformers folder (GPT-2, GPT-Neo, GPT-NeoX/Pythia, Llama, Mistral, Qwen2)")
    return 0


# ---------------------------------------------------------------------- entry point
_FLAG_NAMES = (  # safety net: Python argument names that engine messages may still contain
    (re.compile(r"pass overwrite=True \(CLI: --force\)"), "pass --force"),
    (re.compile(r"overwrite=True"), "--force"),
    (re.compile(r"pass force=True \(CLI: --force\)"), "pass --force-render"),
    (re.compile(r"use another metric / ablation"), "use another --metric (evaluate: or --ablation)"),
    (re.compile(r"; pass vocab_ids=\.\.\. to choose the token pool"),
     "; use a model whose tokenizer has these words, or a .csv/.jsonl task file (--task)"),
)


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror and err.filename:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    for pattern, flag in _FLAG_NAMES:
        text = pattern.sub(flag, text)
    return _one_line(text, 600)


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"warning: {_one_line(message)}", file=sys.stderr)


USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError, ValueError, FileNotFoundError, FileExistsError, NotImplementedError, IsADirectoryError,
    NotADirectoryError, PermissionError, json.JSONDecodeError, UnicodeDecodeError,
)
"""Errors that represent a user mistake: one line, exit code 2. Anything else is a bug (traceback)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user mistake, 130 interrupted)."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            parser = build_parser()
            args = parser.parse_args(argv)
            if getattr(args, "func", None) is None:  # bare `circuits`
                parser.print_help()
                return 2
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted (no partial output files were written)", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        print(f"error: {_message(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno is None:  # not a failed system call: a bug
            raise
        print(f"error: {_message(err)}", file=sys.stderr)
        return 2
    finally:
        while _RESTORE:
            _RESTORE.pop()()


if __name__ == "__main__":
    sys.exit(main())
