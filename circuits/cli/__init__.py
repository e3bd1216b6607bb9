"""Command-line interface: a thin layer over the Python API.

    circuits discover --model induction-2l --task induction --method eap-ig-inputs --edges 40 --out out/
    circuits evaluate --model induction-2l --task induction --circuit out/circuit.json
    circuits render out/circuit.json --out out/circuit.pdf --merge-qkv
    circuits patch --model induction-2l --task induction --receivers a1.h0<k> --out out/heatmap.png
    circuits plan --model gpt2 --method eap-ig-inputs --tokens 128 --batch 32 --max-memory 24GB
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
import sys
import warnings
from collections.abc import Callable, Sequence

from .commands import cmd_discover, cmd_evaluate, cmd_models, cmd_patch, cmd_plan, cmd_render, cmd_tasks
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
    "USER_ERRORS", "UsageError", "build_parser", "cmd_discover", "cmd_evaluate", "cmd_models", "cmd_patch",
    "cmd_plan", "cmd_render", "cmd_tasks", "main",
]


def _commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    """Subcommand name -> function, looked up here at call time (so ``circuits.cli.cmd_*`` can be replaced)."""
    return {"discover": cmd_discover, "evaluate": cmd_evaluate, "render": cmd_render, "patch": cmd_patch,
            "tasks": cmd_tasks, "models": cmd_models, "plan": cmd_plan}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user mistake, 130 interrupted)."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            parser = build_parser()
            args = parser.parse_args(argv)
            if args.command is None:  # bare `circuits`
                parser.print_help()
                return 2
            return int(_commands()[args.command](args) or 0)
    except KeyboardInterrupt:
        print("interrupted (no partial output files were written)", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno is None:  # not a failed system call: a bug
            raise
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    finally:
        while RESTORE:
            RESTORE.pop()()
