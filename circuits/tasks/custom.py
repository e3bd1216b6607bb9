"""Load your own task from a CSV or JSONL file.

Columns (CSV header) / keys (one JSON object per line):

* ``clean``: the clean prompt;
* ``corrupted``: the corrupted prompt, which must have the same number of tokens as ``clean``;
* ``answer``: the correct continuation, e.g. ``" Mary"`` (note the leading space for GPT-2-style tokenizers);
* ``wrong_answer``: the wrong continuation, e.g. ``" John"``;
* ``metric`` (optional): a metric name from :data:`circuits.metrics.METRICS`; all rows must agree.

In JSONL, ``answer`` and ``wrong_answer`` may also be lists of strings (answer sets). Every answer must be
exactly one token after its prompt: ``encode(clean + answer) == encode(clean) + [one token]``.

Nothing is dropped silently: any problem raises ``ValueError`` naming the file, the row (CSV: data row
number, 1 = first row after the header; JSONL: line number) and the offending values.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from circuits.metrics import METRICS

from .base import Task, encode, pad_id_for, resolve_bos, tokenizer_label

__all__ = ["REQUIRED_COLUMNS", "load_csv", "load_jsonl", "task_from_rows"]

REQUIRED_COLUMNS: tuple[str, ...] = ("clean", "corrupted", "answer", "wrong_answer")
OPTIONAL_COLUMNS: tuple[str, ...] = ("metric",)
DEFAULT_METRIC = "logit_diff"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ValueError(f"task file does not exist: {path}")
    if not path.is_file():
        raise ValueError(f"task path is not a file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"dataset is empty: {path} is an empty file")


def _missing_columns_error(path: Path, present: list[str], where: str) -> ValueError:
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    return ValueError(
        f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}{where}; required columns are "
        f"{', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)}); found {present}"
    )


def _as_list(value: Any, column: str, path: Path, where: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v != "" for v in values):
        raise ValueError(f"{path} {where}: column {column!r} must be a non-empty string or list of strings, "
                         f"got {value!r}")
    return values


def task_from_rows(rows: list[tuple[str, dict]], tokenizer: Any, path: Path, *, metric: str | None = None,
                   name: str | None = None, prepend_bos: bool | None = None) -> Task:
    """Validate and tokenize ``(location, row)`` pairs (``location`` like ``"row 3"``) into a :class:`Task`."""
    if not rows:
        raise ValueError(f"dataset is empty: {path} has no data rows")
    row_metrics = {str(r["metric"]).strip() for _, r in rows if str(r.get("metric") or "").strip()}
    if metric is None:
        if len(row_metrics) > 1:
            raise ValueError(f"{path}: rows name different metrics {sorted(row_metrics)}; a task has one metric")
        metric = row_metrics.pop() if row_metrics else DEFAULT_METRIC
    if metric not in METRICS:
        raise ValueError(f"{path}: unknown metric {metric!r}; valid names: {', '.join(sorted(METRICS))}")
    bos = resolve_bos(tokenizer, prepend_bos)
    prefix = [bos] if bos is not None else []
    label = tokenizer_label(tokenizer)
    clean, corrupted, clean_ids, corrupted_ids, answers, wrong = [], [], [], [], [], []
    for where, row in rows:
        c_text, k_text = row["clean"], row["corrupted"]
        for column, text in (("clean", c_text), ("corrupted", k_text)):
            if not isinstance(text, str) or text == "":
                raise ValueError(f"{path} {where}: column {column!r} must be a non-empty string, got {text!r}")
        c_ids, k_ids = encode(tokenizer, c_text), encode(tokenizer, k_text)
        if len(c_ids) != len(k_ids):
            raise ValueError(
                f"{path} {where}: clean and corrupted prompts have different token lengths ({len(c_ids)} vs "
                f"{len(k_ids)}) for tokenizer {label}; clean {c_text!r} -> {c_ids}; corrupted {k_text!r} -> {k_ids}"
            )
        sets = []
        for column in ("answer", "wrong_answer"):
            ids = []
            for text in _as_list(row[column], column, path, where):
                full = encode(tokenizer, c_text + text)
                if not (len(full) == len(c_ids) + 1 and full[: len(c_ids)] == c_ids):
                    extra = full[len(c_ids):] if full[: len(c_ids)] == c_ids else full
                    raise ValueError(
                        f"{path} {where}: {column} {text!r} is not a single token after the clean prompt for "
                        f"tokenizer {label} (it tokenizes to {extra}); answers must be exactly one token"
                    )
                ids.append(full[-1])
            sets.append(list(dict.fromkeys(ids)))
        if set(sets[0]) & set(sets[1]):
            raise ValueError(f"{path} {where}: answer and wrong_answer share token ids {sorted(set(sets[0]) & set(sets[1]))}")
        clean.append(c_text)
        corrupted.append(k_text)
        clean_ids.append(prefix + c_ids)
        corrupted_ids.append(prefix + k_ids)
        answers.append(sets[0])
        wrong.append(sets[1])
    meta = {"source_file": str(path), "tokenizer": label, "prepend_bos": bos is not None, "dropped": {}}
    return Task(name=name or path.stem, clean=clean, corrupted=corrupted, clean_ids=clean_ids,
                corrupted_ids=corrupted_ids, answers=answers, wrong=wrong, metric=metric,
                pad_id=pad_id_for(tokenizer), meta=meta)


def load_csv(path: str | Path, tokenizer: Any, metric: str | None = None, *, name: str | None = None,
             prepend_bos: bool | None = None) -> Task:
    """Load a task from a CSV file with a header row (columns: clean, corrupted, answer, wrong_answer[, metric]).

    ``metric`` overrides the file's ``metric`` column (default ``logit_diff``). Leading spaces in cells are
    kept (write ``" Mary"`` quoted or unquoted; the csv module does not strip them).
    """
    path = Path(path)
    _check_file(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h for h in (reader.fieldnames or [])]
        if not header:
            raise ValueError(f"dataset is empty: {path} has no header row")
        if any(c not in header for c in REQUIRED_COLUMNS):
            raise _missing_columns_error(path, header, " in the header")
        rows = []
        for i, row in enumerate(reader, start=1):
            if all((v or "") == "" for k, v in row.items() if k is not None):
                continue  # blank line
            if any(row.get(c) is None for c in REQUIRED_COLUMNS):
                raise ValueError(f"{path} row {i}: has fewer cells than the header {header}")
            rows.append((f"row {i}", row))
    return task_from_rows(rows, tokenizer, path, metric=metric, name=name, prepend_bos=prepend_bos)


def load_jsonl(path: str | Path, tokenizer: Any, metric: str | None = None, *, name: str | None = None,
               prepend_bos: bool | None = None) -> Task:
    """Load a task from a JSON-lines file: one object per line with keys clean, corrupted, answer,
    wrong_answer (strings or lists of strings) and optionally metric. Blank lines are skipped."""
    path = Path(path)
    _check_file(path)
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}")
            if any(c not in obj for c in REQUIRED_COLUMNS):
                raise _missing_columns_error(path, list(obj), f" on line {lineno}")
            rows.append((f"line {lineno}", obj))
    return task_from_rows(rows, tokenizer, path, metric=metric, name=name, prepend_bos=prepend_bos)
