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
number, 1 = first row after the header, and its line in the file; JSONL: line number) and the offending
values. Files must be UTF-8 (a UTF-8 byte-order mark, as Excel writes, is accepted).

Models without a tokenizer: build the task from token ids with :func:`task_from_ids`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from circuits.metrics import METRICS

from .base import Task
from .build import encode, pad_id_for, resolve_bos, tokenizer_label

__all__ = ["REQUIRED_COLUMNS", "load_csv", "load_jsonl", "task_from_ids", "task_from_rows"]

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


def _read_text(path: Path) -> str:
    """The file's text, decoded as UTF-8 (a leading byte-order mark is dropped)."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ValueError(f"{path} is not UTF-8 (undecodable byte 0x{err.object[err.start]:02x} on line {line}); "
                         "save it as UTF-8") from None


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


def _id_list(value: Any, what: str, i: int) -> list[int]:
    if hasattr(value, "tolist"):  # a tensor or numpy array
        value = value.tolist()
    values = [value] if isinstance(value, int) else value
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"task_from_ids: {what}[{i}] must be a token id or a list of token ids, got {value!r}")
    values = list(values)
    if not values:
        raise ValueError(f"task_from_ids: {what}[{i}] is empty")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if bad:
        raise ValueError(f"task_from_ids: {what}[{i}] must hold non-negative int token ids, got {bad[0]!r}")
    return values


def task_from_ids(
    clean_ids: Any,
    corrupted_ids: Any,
    answers: Any,
    wrong: Any,
    metric: str = DEFAULT_METRIC,
    name: str = "custom",
    *,
    pad_id: int = 0,
    vocab_size: int | None = None,
) -> Task:
    """A task from token ids, for models without a tokenizer (or to control tokenization exactly).

    Args:
        clean_ids, corrupted_ids: one prompt per example, each a list of token ids (or a ``[N, P]`` tensor);
            an example's clean and corrupted prompts must have the same length. No BOS is added: include it.
        answers, wrong: per example, the correct / wrong next-token id, or a list of ids (an answer set).
        metric: a name from :data:`circuits.metrics.METRICS` (default ``logit_diff``).
        name: the task's name (shown in reports).
        pad_id: the id used to left-pad prompts of different lengths (any id; padding is masked out).
        vocab_size: if given, every id must be below it (pass ``model.config.vocab_size``).

    Raises ``ValueError`` naming the example (0-based) and the argument on any inconsistency.

    >>> task = task_from_ids([[5, 7, 9], [5, 8, 9]], [[5, 2, 9], [5, 3, 9]], [7, 8], [2, 3])  # doctest: +SKIP
    """
    columns = {"clean_ids": clean_ids, "corrupted_ids": corrupted_ids, "answers": answers, "wrong": wrong}
    lists = {}
    for what, value in columns.items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ValueError(f"task_from_ids: {what} must be a list with one entry per example, got {type(value).__name__}")
        lists[what] = list(value)
    n = len(lists["clean_ids"])
    if n == 0:
        raise ValueError("task_from_ids: no examples (clean_ids is empty)")
    for what, value in lists.items():
        if len(value) != n:
            raise ValueError(f"task_from_ids: {what} has {len(value)} entries but clean_ids has {n}; give one per example")
    if metric not in METRICS:
        raise ValueError(f"task_from_ids: unknown metric {metric!r}; valid names: {', '.join(sorted(METRICS))}")
    out: dict[str, list[list[int]]] = {what: [] for what in lists}
    for i in range(n):
        for what in lists:
            ids = _id_list(lists[what][i], what, i)
            if vocab_size is not None and max(ids) >= vocab_size:
                raise ValueError(f"task_from_ids: {what}[{i}] holds token id {max(ids)}, but the vocabulary has "
                                 f"{vocab_size} tokens (ids 0..{vocab_size - 1})")
            out[what].append(ids if what.endswith("_ids") else list(dict.fromkeys(ids)))
        c, k = out["clean_ids"][i], out["corrupted_ids"][i]
        if len(c) != len(k):
            raise ValueError(f"task_from_ids: example {i}: clean_ids has {len(c)} tokens but corrupted_ids has "
                             f"{len(k)}; clean and corrupted prompts must have the same length")
        overlap = set(out["answers"][i]) & set(out["wrong"][i])
        if overlap:
            raise ValueError(f"task_from_ids: example {i}: token ids {sorted(overlap)} are in both answers and wrong")
    return Task(name=name, clean=[], corrupted=[], clean_ids=out["clean_ids"], corrupted_ids=out["corrupted_ids"],
                answers=out["answers"], wrong=out["wrong"], metric=metric, pad_id=int(pad_id),
                meta={"source": "token ids"})


def load_csv(path: str | Path, tokenizer: Any, metric: str | None = None, *, name: str | None = None,
             prepend_bos: bool | None = None) -> Task:
    """Load a task from a CSV file with a header row (columns: clean, corrupted, answer, wrong_answer[, metric]).

    ``metric`` overrides the file's ``metric`` column (default ``logit_diff``). Leading spaces in cells are
    kept (write ``" Mary"`` quoted or unquoted; the csv module does not strip them).
    """
    path = Path(path)
    _check_file(path)
    text = _read_text(path)
    if not text.strip():
        raise ValueError(f"dataset is empty: {path} holds only blank lines")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() if isinstance(h, str) else h for h in (reader.fieldnames or [])]
        if not header:
            raise ValueError(f"dataset is empty: {path} has no header row")
        reader.fieldnames = header
        if any(c not in header for c in REQUIRED_COLUMNS):
            raise _missing_columns_error(path, header, " in the header")
        rows = []
        for i, row in enumerate(reader, start=1):
            where = f"row {i}"
            at = f"row {i} (line {reader.line_num})"
            if None in row:  # DictReader's restkey: cells beyond the header
                n_cells = len(header) + len(row[None])
                raise ValueError(
                    f"{path} {at}: has {n_cells} cells but the header has {len(header)}; quote cells "
                    'that contain a comma (e.g. "Hello, world")'
                )
            if all((v or "") == "" for v in row.values()):
                continue  # blank line
            if any(row.get(c) is None for c in REQUIRED_COLUMNS):
                n_cells = sum(v is not None for v in row.values())
                raise ValueError(f"{path} {at}: has {n_cells} cells but the header has {len(header)} "
                                 f"({', '.join(header)})")
            rows.append((where, row))
    except csv.Error as err:
        raise ValueError(f"{path} line {reader.line_num}: not valid CSV ({err})") from None
    return task_from_rows(rows, tokenizer, path, metric=metric, name=name, prepend_bos=prepend_bos)


def load_jsonl(path: str | Path, tokenizer: Any, metric: str | None = None, *, name: str | None = None,
               prepend_bos: bool | None = None) -> Task:
    """Load a task from a JSON-lines file: one object per line with keys clean, corrupted, answer,
    wrong_answer (strings or lists of strings) and optionally metric. Blank lines are skipped."""
    path = Path(path)
    _check_file(path)
    rows = []
    # split on newlines only: str.splitlines would also split inside strings holding U+2028 etc.
    lines = _read_text(path).split("\n")
    if not any(line.strip() for line in lines):
        raise ValueError(f"dataset is empty: {path} holds only blank lines")
    last_line = max(i for i, line in enumerate(lines, start=1) if line.strip())
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            hint = "; the file looks truncated" if lineno == last_line and err.msg.startswith(("Expecting", "Unterminated")) else ""
            raise ValueError(f"{path} line {lineno}: not valid JSON ({err.msg} at column {err.colno}){hint}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}")
        if any(c not in obj for c in REQUIRED_COLUMNS):
            raise _missing_columns_error(path, list(obj), f" on line {lineno}")
        rows.append((f"line {lineno}", obj))
    return task_from_rows(rows, tokenizer, path, metric=metric, name=name, prepend_bos=prepend_bos)
