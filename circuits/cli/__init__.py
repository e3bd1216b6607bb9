"""Command-line interface: a thin layer over the Python API.

    circuits discover --model induction-2l --task induction --method eap-ig-inputs --edges 40 --out out/
    circuits evaluate --model induction-2l --task induction --circuit out/circuit.json
    circuits render out/circuit.json --out out/circuit.pdf --merge-qkv
    circuits patch --model induction-2l --task induction --receivers a1.h0<k> --out out/heatmap.png
    circuits tasks | circuits models

Every user mistake ends in one line ``error: ...`` on stderr and exit code 2, found before any
expensive work: the options are checked first, then the output paths, the model folder
(``config.json`` only), the device and the task; the model loads last. The error table is in
docs/errors.md. This package imports neither torch nor transformers at import time, so ``circuits
models``, ``circuits tasks`` and ``--help`` start quickly.

Modules, each importing only the ones before it: :mod:`.errors` (:class:`UsageError`, message wording),
:mod:`.parser` (option names, :func:`build_parser`), :mod:`.preflight` (checks before any work, loading),
:mod:`.commands` (the ``cmd_*`` functions) and this one (:func:`main`, the entry point).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from .commands import cmd_compare, cmd_discover, cmd_evaluate, cmd_export_mib, cmd_models, cmd_patch, cmd_render, cmd_tasks
from .errors import USER_ERRORS, UsageError, error_message, show_warning
from .parser import (
    ABLATIONS,
    DATA_FORMATS,
    DEFAULTS,
    DISCOVER_OUTPUTS,
    DRAWING_FORMATS,
    DTYPES,
    IG_METHODS,
    INSTALL_GRAPHVIZ,
    LOADABLE,
    MAX_DIAGRAM_EDGES,
    METHODS,
    METRICS,
    PLOT_FORMATS,
    SUFFIX_ALIASES,
    build_parser,
)
from .preflight import RESTORE

__all__ = [
    "ABLATIONS", "DATA_FORMATS", "DEFAULTS", "DISCOVER_OUTPUTS", "DRAWING_FORMATS", "DTYPES", "IG_METHODS",
    "INSTALL_GRAPHVIZ", "LOADABLE", "MAX_DIAGRAM_EDGES", "METHODS", "METRICS", "PLOT_FORMATS", "SUFFIX_ALIASES",
    "USER_ERRORS", "UsageError", "build_parser", "cmd_compare", "cmd_discover", "cmd_export_mib", "cmd_evaluate", "cmd_models", "cmd_patch",
    "cmd_render", "cmd_tasks", "main",
]


def _commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    """Subcommand name -> function, looked up here at call time (so ``circuits.cli.cmd_*`` can be replaced)."""
    return {"discover": cmd_discover, "evaluate": cmd_evaluate, "render": cmd_render, "patch": cmd_patch,
            "tasks": cmd_tasks, "models": cmd_models, "export-mib": cmd_export_mib, "compare": cmd_compare}


DISTRIBUTED_COMMANDS = ("discover", "evaluate", "patch")
"""Commands that run data-parallel when launched by ``torchrun`` with several processes."""


def _rank() -> int:
    """This process's rank under ``torchrun`` (0 otherwise), read without importing torch."""
    return int(os.environ.get("RANK", "0"))


def _join_process_group(args: argparse.Namespace) -> None:
    """Under ``torchrun`` with ``WORLD_SIZE`` > 1: join the process group (left again by RESTORE);
    on CUDA every rank takes its ``LOCAL_RANK`` device; ranks other than 0 run quietly."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or args.command not in DISTRIBUTED_COMMANDS:
        return
    import torch.distributed as dist

    from ..parallel import finish, init_from_env

    if not dist.is_initialized():  # leave only a group this call joined (not an API caller's)
        RESTORE.append(finish)
    device = init_from_env()
    if device is not None and device.type == "cuda":
        args.device = str(device)
    if _rank() != 0:
        args.quiet = True
        stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115 -- closed by RESTORE
        RESTORE.append(lambda: (sys.stdout.close(), setattr(sys, "stdout", stdout)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 another process of a distributed job failed,
    2 user mistake, 130 interrupted)."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            parser = build_parser()
            args = parser.parse_args(argv)
            if args.command is None:  # bare `circuits`
                parser.print_help()
                return 2
            _join_process_group(args)
            return int(_commands()[args.command](args) or 0)
    except KeyboardInterrupt:
        print("interrupted (no partial output files were written)", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        _error(error_message(err))
        return 2
    except OSError as err:
        if err.errno is None:  # not a failed system call: a bug
            raise
        _error(error_message(err))
        return 2
    except RuntimeError as err:
        if type(err).__name__ != "RankFailure":  # circuits.parallel.RankFailure, not imported (no torch here)
            raise
        _error(str(err))
        return 1
    finally:
        while RESTORE:
            RESTORE.pop()()


def _error(message: str) -> None:
    """Print ``error: message``; ranks other than 0 of a distributed job say which rank they are (an error may
    be one machine's alone, e.g. a file missing there, so no rank keeps its error to itself)."""
    rank = _rank()
    print(f"error: {f'rank {rank}: ' if rank else ''}{message}", file=sys.stderr)
