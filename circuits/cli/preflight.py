"""Preflight: the checks done before any expensive work, in the order the CLI runs them (options, output
paths, model folder from ``config.json`` only, task spec, device), and the helpers that then load the task and
the model (the expensive part, last) or a saved circuit. Every problem is a :class:`UsageError` naming the flag."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import UsageError, one_line
from .parser import DEFAULTS, IG_METHODS, LOADABLE, MAX_TARGET, SUFFIX_ALIASES

NOT_DIFFERENTIABLE = ("accuracy", "top1")  # metrics whose value has no gradient in the logits


# ---------------------------------------------------------------------- options
def resolve_discover(args: argparse.Namespace) -> None:
    """Refuse options the chosen method ignores; fill in the defaults of the others."""
    m = args.method
    given = {flag: value for flag, value in (("--edges", args.edges), ("--threshold", args.threshold),
                                              ("--prune", args.prune), ("--signed", args.signed or None),
                                              ("--steps", args.steps), ("--tau", args.tau),
                                              ("--faithfulness", args.faithfulness),
                                              ("--refine", args.refine or None)) if value is not None}
    if m == "acdc":
        for flag in ("--edges", "--threshold", "--prune", "--signed", "--faithfulness", "--refine"):
            if flag in given:
                raise UsageError(f"{flag} does not apply to --method acdc, which chooses its own circuit (set its "
                                 "size with --tau); drop it or choose another --method")
    elif "--tau" in given:
        raise UsageError(f"--tau only applies to --method acdc (you chose {m}); drop --tau or use --method acdc")
    if "--steps" in given and m not in (*IG_METHODS, "edge-pruning"):
        raise UsageError(f"--steps only applies to the integrated-gradients methods ({', '.join(IG_METHODS)}) and "
                         f"edge-pruning; --method {m} takes no steps")
    if args.metric in NOT_DIFFERENTIABLE and m not in ("exact", "acdc"):
        raise UsageError(f"--metric {args.metric} has no gradient, and --method {m} follows the metric's gradient; "
                         "use --metric logit_diff, prob_diff, kl_div or answer_logprob, or --method exact or acdc")
    if "--refine" in given and "--faithfulness" not in given:
        raise UsageError("--refine needs --faithfulness F (refinement removes edges while f stays >= F)")
    if "--faithfulness" in given:
        if not args.faithfulness <= MAX_TARGET:
            raise UsageError(f"--faithfulness {args.faithfulness:g} is out of range: use 0 < F <= {MAX_TARGET} "
                             "(1.0 = as faithful as the full model)")
        if "--prune" in given:
            raise UsageError("--prune only applies with --edges; --faithfulness searches top-k circuits")
    if "--prune" in given and "--threshold" in given:
        raise UsageError("--prune only applies with --edges, not with --threshold; drop one of them")
    if args.parallel == "masks" and (int(os.environ.get("WORLD_SIZE", "1")) <= 1 or m in ("acdc", "edge-pruning")):
        why = (f"--method {m} always splits the examples" if m in ("acdc", "edge-pruning") else
               "it needs several processes (launch with torchrun --nproc-per-node N -m circuits discover ...)")
        raise UsageError(f"--parallel masks does not apply here: {why}; drop --parallel")
    args.tau = DEFAULTS["tau"] if args.tau is None else args.tau
    default_steps = DEFAULTS["pruning_steps"] if m == "edge-pruning" else DEFAULTS["steps"]
    args.steps = default_steps if args.steps is None else args.steps
    args.prune = DEFAULTS["prune"] if args.prune is None else args.prune
    args.edges_given = args.edges is not None
    if m == "acdc":
        args.edges = args.threshold = None
    elif args.threshold is None and args.edges is None and args.faithfulness is None:
        args.edges = DEFAULTS["edges"]


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


def check_out_folder(out: Path, names: Sequence[str], force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose a folder path")
    _check_writable_parent(out, "--out")
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        raise UsageError(f"--out {out} already holds results ({', '.join(existing)}); pass --force to overwrite them")


def check_out_file(out: Path, force: bool, flag: str = "--out") -> None:
    if out.is_dir():
        raise UsageError(f"{flag} {out} is a folder; give a file path")
    _check_writable_parent(out, flag)
    if out.exists() and not force:
        raise UsageError(f"{flag} {out} already exists; pass --force to overwrite it")


def format_of(path: str | Path, given: str | None, valid: Sequence[str], flag: str, action: str = "write") -> str:
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


def is_planted(model: str, task: str | None) -> bool:
    from .. import zoo

    entry = zoo.MODELS.get(model.lower())
    return task in (None, "planted") and entry is not None and entry.task == "planted"


class Model:
    """A checked model spec: its folder, raw config and edge graph, all from ``config.json``."""

    def __init__(self, spec: str, require_tokenizer: bool):
        from .. import zoo

        self.spec = spec
        self.is_zoo = spec.lower() in zoo.MODELS
        self.entry = zoo.MODELS[spec.lower()] if self.is_zoo else None
        try:
            check = zoo.check_folder(spec, require_tokenizer=require_tokenizer)
        except ValueError as err:
            raise UsageError(f"--model: {err}") from None
        self.folder, self.raw_config, self.has_tokenizer = check.path, check.config, check.has_tokenizer
        self._layout = None
        self.config: Any = None  # the transformers config, once the layout has been read

    @property
    def layout(self) -> Any:
        """The model's edge layout, from its config (no weights are loaded)."""
        if self._layout is None:
            from transformers import AutoConfig

            from ..models import graph_for

            try:
                self.config = AutoConfig.from_pretrained(str(self.folder), local_files_only=True)
                self._layout = graph_for(self.config).layout
            except (OSError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError) as err:
                raise UsageError(f"--model {self.spec}: cannot read {self.folder / 'config.json'} "
                                 f"({one_line(err, 200)})") from None
        return self._layout

    def shape_text(self) -> str:
        L, H, parallel = self.layout.shape
        return f"{L} layers x {H} heads" + (", parallel attention/MLP" if parallel else "")

    def load_tokenizer(self) -> Any:
        from .. import zoo

        try:
            return zoo.load_tokenizer(self.folder)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UsageError(f"--model {self.spec}: cannot load its tokenizer ({one_line(err, 200)})") from None

    def load(self, device: str, dtype: str) -> Any:
        from .. import zoo

        try:
            return zoo.load_model(self.folder, device=device, dtype=dtype)
        except Exception as err:  # only the failures of reading the files are user mistakes
            if not (isinstance(err, (OSError, ValueError, KeyError, RuntimeError)) or "Safetensor" in type(err).__name__):
                raise
            raise UsageError(f"--model {self.spec}: cannot load the weights in {self.folder} "
                             f"({one_line(err, 200)}); is the folder complete and does config.json match them?") from None


def same_model(recorded: str, given: str) -> bool:
    if recorded == given:
        return True
    from .. import zoo

    try:
        return zoo.model_path(recorded).resolve() == zoo.model_path(given).resolve()
    except (ValueError, OSError):
        return recorded.strip().lower() == given.strip().lower()


def _task_spec(args: argparse.Namespace, model: Model) -> tuple[str, Path | None]:
    """(task name, task file or None), checked without loading anything."""
    from ..tasks import TASK_INFO

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


# ---------------------------------------------------------------------- loading (the expensive part, last)
def progress(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


RESTORE: list[Callable[[], None]] = []
"""Undo steps for global state changed during one :func:`circuits.cli.main` call (run at its end)."""


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

    RESTORE.append(restore)


def prepare(args: argparse.Namespace, model: Model) -> tuple[Any, Any, Any, Any]:
    """(model, task, train, test): checks the task and the split, then loads the model (the expensive part)."""
    import torch

    from .. import zoo
    from ..tasks import load_task

    task_name, task_file = _task_spec(args, model)
    _check_device(args.device)
    _quiet_transformers(args.quiet)
    torch.manual_seed(args.seed)
    if task_name == "planted":  # a planted model generates its own task from token ids
        from ..zoo.planted import planted_task

        task = planted_task(model.entry.name, n=args.n_examples or DEFAULTS["n_examples"], seed=args.seed)
    else:
        tokenizer = model.load_tokenizer()
        options: dict[str, Any] = {}
        if model.entry is not None and task_file is None:
            # the zoo model's options (BOS, token pool) that this task's generator accepts
            import inspect

            from ..tasks import TASKS

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
    check_memory(args, model, task, train, test)
    progress(args, f"loading {args.model} ...")
    return model.load(args.device, args.dtype), task, train, test


def check_memory(args: argparse.Namespace, model: Model, task: Any, train: Any, test: Any) -> None:
    """Fit the run into ``--max-memory`` (default: the device's free memory less a margin) before loading the model.

    Sets ``args.batch_size`` (the requested one, or the largest that fits when none was given) and
    ``args.max_rows`` (mask x example rows per masked forward) and ``args.sparse`` (False when only the dense
    masked forward fits); a run that cannot fit is a UsageError
    with the estimate and the largest batch that fits.
    """
    given = args.batch_size is not None
    args.batch_size = args.batch_size if given else DEFAULTS["batch_size"]
    args.max_rows, args.sparse = 512, True
    if args.command not in ("discover", "evaluate"):
        return
    from ..planning import MemoryBudgetError, choose, choose_for_discover, default_budget, format_bytes, shape_of

    budget = args.max_memory if args.max_memory is not None else default_budget(args.device)
    # under torchrun: --max-memory is per process; processes on one host share its free CPU memory, and
    # each prepares only its shard of the examples when they are split (--parallel data, the default)
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if args.max_memory is None and not str(args.device).startswith("cuda"):
        budget //= max(1, local)
    shards = world if getattr(args, "parallel", "data") == "data" else 1
    n_train, n_test = -(-len(train) // shards), -(-len(test) // shards)
    model.layout  # noqa: B018  (reads the config)
    shape = shape_of(model.config, args.dtype)
    tokens = max(len(ids) for ids in task.clean_ids)
    fixed = given or (args.command == "discover" and args.method == "edge-pruning")  # its batches change its result
    try:
        if args.command == "discover":
            plan = choose_for_discover(shape, args.method, tokens, args.batch_size, budget, n_train, n_test,
                                       batch_fixed=fixed, faithfulness=args.faithfulness is not None,
                                       device=args.device)
        else:
            plan = choose(shape, "curve", tokens, args.batch_size, budget, n_test, batch_fixed=fixed, device=args.device)
    except MemoryBudgetError as err:
        source = "--max-memory" if args.max_memory is not None else "the free memory of --device " + args.device
        raise UsageError(f"{err} (budget: {source}; see `circuits plan`)") from None
    if plan.batch < min(args.batch_size, len(test), len(train) if args.command == "discover" else len(test)):
        progress(args, f"memory: batch lowered from {args.batch_size} to {plan.batch} to fit {format_bytes(budget)}")
    args.batch_size, args.max_rows, args.sparse = plan.batch, plan.max_rows, plan.sparse


def read_json_file(path: Path, flag: str) -> Any:
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


def load_circuit(path: str | Path, flag: str = "") -> Any:
    """A saved circuit; any problem with the file is one line naming it."""
    import xml.etree.ElementTree as ET

    from ..render import load

    path = Path(path)
    name = f"{flag} {path}".strip()
    if not path.exists():
        raise UsageError(f"{name}: no such file")
    if path.is_dir():
        raise UsageError(f"{name} is a folder; give a circuit file (circuit.json, .graphml, .gexf, .csv)")
    fmt = format_of(path, None, LOADABLE, flag or "circuit file", "read")
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
        raise UsageError(f"{path} is not a valid circuit file ({one_line(reason or 'unexpected content', 200)})") from None
    except Exception as err:  # networkx raises its own errors on malformed GraphML/GEXF
        if type(err).__module__.startswith("networkx"):
            raise UsageError(f"{path} is not a valid circuit file ({one_line(err, 200)})") from None
        raise
