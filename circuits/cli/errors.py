"""The CLI's user errors and how they are worded: one line ``error: ...``, exit code 2 (docs/errors.md)."""

from __future__ import annotations

import json
import re
import sys
from typing import Any


class UsageError(Exception):
    """A user mistake the CLI reports in one line (exit code 2)."""


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_FLAG_NAMES = (  # safety net: Python argument names that engine messages may still contain
    (re.compile(r"pass overwrite=True \(CLI: --force\)"), "pass --force"),
    (re.compile(r"overwrite=True"), "--force"),
    (re.compile(r"pass force=True \(CLI: --force\)"), "pass --force-render"),
    (re.compile(r"use another metric / ablation"), "use another --metric (evaluate: or --ablation)"),
    (re.compile(r"; pass vocab_ids=\.\.\. to choose the token pool"),
     "; use a model whose tokenizer has these words, or a .csv/.jsonl task file (--task)"),
)


def error_message(err: BaseException) -> str:
    """The one-line message for a user error, in terms of the CLI's flags."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    for pattern, flag in _FLAG_NAMES:
        text = pattern.sub(flag, text)
    return one_line(text, 600)


def show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"warning: {one_line(message)}", file=sys.stderr)


USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError, ValueError, FileNotFoundError, FileExistsError, NotImplementedError, IsADirectoryError,
    NotADirectoryError, PermissionError, json.JSONDecodeError, UnicodeDecodeError,
)
"""Errors that represent a user mistake: one line, exit code 2. Anything else is a bug (traceback)."""
