"""Tasks: clean/corrupted prompt datasets with answer sets, for circuit discovery and evaluation.

Built-in generators (each ``make_<task>(tokenizer, n=100, seed=0, **options) -> Task``):

=================  ==========================================  ===============
name               generator                                   default metric
=================  ==========================================  ===============
``ioi``            :func:`circuits.tasks.ioi.make_ioi`          logit_diff
``greater-than``   :func:`circuits.tasks.greater_than.make_greater_than`  prob_diff
``induction``      :func:`circuits.tasks.induction.make_induction`  answer_logprob
``docstring``      :func:`circuits.tasks.docstring.make_docstring`  logit_diff
``sva``            :func:`circuits.tasks.sva.make_sva`          logit_diff
``gender``         :func:`circuits.tasks.gender.make_gender`    logit_diff
``pronoun``        :func:`circuits.tasks.pronoun.make_pronoun`  logit_diff
=================  ==========================================  ===============

:func:`load_task` accepts one of these names or the path of a ``.csv`` / ``.jsonl`` file
(see :mod:`circuits.tasks.custom`). :func:`task_from_ids` builds a task from token ids (for models
without a tokenizer). :func:`gpt2_tokenizer` loads the GPT-2 tokenizer shipped with the package.

:data:`TASK_INFO` describes the built-in tasks in plain text without importing them: the generators
(and torch) load on first use of :data:`TASKS`, a generator or a submodule.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Task

__all__ = [
    "Batch",
    "Task",
    "as_batches",
    "task_metric",
    "TASKS",
    "TASK_INFO",
    "TASK_MODULES",
    "load_task",
    "load_csv",
    "load_jsonl",
    "task_from_ids",
    "gpt2_tokenizer",
    "GPT2_TOKENIZER_DIR",
    "all_words",
    "make_ioi",
    "make_greater_than",
    "make_induction",
    "make_docstring",
    "make_sva",
    "make_gender",
    "make_pronoun",
]

TASK_INFO: dict[str, tuple[str, str, str]] = {
    "ioi": ("ioi", "logit_diff",
            "indirect object: 'When Mary and John went to the store, John gave a drink to' -> ' Mary'"),
    "greater-than": ("greater_than", "prob_diff",
                     "years: 'The war lasted from the year 1732 to the year 17' -> a number above 32"),
    "induction": ("induction", "answer_logprob",
                  "copy a repeated sequence of random tokens (token level, any tokenizer)"),
    "docstring": ("docstring", "logit_diff",
                  "Python docstrings: the next ':param' name, taken from the function's arguments"),
    "sva": ("sva", "logit_diff",
            "subject-verb agreement: 'The author near the guards' -> ' is', not ' are'"),
    "gender": ("gender", "logit_diff",
               "gendered pronoun after a name: 'So Mary is such a good friend, isn't' -> ' she'"),
    "pronoun": ("pronoun", "logit_diff",
                "story pronoun: 'Once upon a time, there was a little girl. Every day,' -> ' she'"),
}
"""Built-in tasks, plain text and import-free (``circuits tasks`` lists it): name -> (module, default
metric, one-line summary). The generator of ``name`` is ``circuits.tasks.<module>.make_<module>``."""

_LAZY: dict[str, str] = {
    "Batch": "base",
    "Task": "base",
    "as_batches": "base",
    "task_metric": "base",
    "load_csv": "custom",
    "load_jsonl": "custom",
    "task_from_ids": "custom",
    **{f"make_{module}": module for module, _, _ in TASK_INFO.values()},
}
_SUBMODULES = ("base", "custom", *(module for module, _, _ in TASK_INFO.values()))


def __getattr__(name: str) -> Any:
    # PEP 562: submodules (and torch, which they import) load on first use, so listing tasks stays cheap
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name == "TASK_MODULES":
        value = {task: importlib.import_module(f"{__name__}.{module}") for task, (module, _, _) in TASK_INFO.items()}
    elif name == "TASKS":
        value = {task: getattr(importlib.import_module(f"{__name__}.{module}"), f"make_{module}")
                 for task, (module, _, _) in TASK_INFO.items()}
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def _loaded(name: str) -> Any:
    return globals()[name] if name in globals() else __getattr__(name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))


TASKS: dict[str, Callable[..., Task]]
"""Built-in task generators by name (loaded on first access)."""

TASK_MODULES: dict[str, Any]
"""The module of each built-in task (each has ``generate_examples(n, seed)`` and ``words()``)."""

GPT2_TOKENIZER_DIR: Path = Path(__file__).resolve().parent.parent / "assets" / "gpt2-tokenizer"
"""The GPT-2 tokenizer files shipped with the package (OpenAI, MIT; see LICENSE.txt and SOURCE.txt there)."""


def gpt2_tokenizer(folder: str | Path | None = None) -> Any:
    """Load a GPT-2 tokenizer offline with ``AutoTokenizer.from_pretrained``.

    ``folder`` defaults to the copy shipped in ``circuits/assets/gpt2-tokenizer``; pass any local folder
    holding a ``transformers`` tokenizer (``tokenizer.json`` or ``vocab.json`` + ``merges.txt``) to use another.
    """
    from transformers import AutoTokenizer  # imported lazily: tasks work with any tokenizer object

    path = Path(folder) if folder is not None else GPT2_TOKENIZER_DIR
    if not path.is_dir():
        raise ValueError(f"tokenizer folder does not exist: {path}")
    # clean_up_tokenization_spaces=False: the shipped (original) config says True, which would strip spaces
    # before punctuation when decoding, and newer transformers warn about it for BPE tokenizers.
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, clean_up_tokenization_spaces=False)


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def load_task(name_or_path: str | Path, tokenizer: Any, n: int | None = None, seed: int = 0, **kw: Any) -> Task:
    """A built-in task by name, or a user task from a ``.csv`` / ``.jsonl`` file.

    For a built-in name, ``n`` (default 100), ``seed`` and ``kw`` go to its generator. For a file, ``kw`` goes
    to :func:`load_csv` / :func:`load_jsonl` (e.g. ``metric=``), ``seed`` is unused and ``n`` (if given) keeps
    the first ``n`` rows.
    """
    if isinstance(name_or_path, str) and _canonical(name_or_path) in TASK_INFO:
        generator = _loaded("TASKS")[_canonical(name_or_path)]
        return generator(tokenizer, n=100 if n is None else n, seed=seed, **kw)
    path = Path(name_or_path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl"):
        if not path.exists():
            raise ValueError(f"task file does not exist: {path}")
        from .custom import load_csv, load_jsonl

        task = load_csv(path, tokenizer, **kw) if suffix == ".csv" else load_jsonl(path, tokenizer, **kw)
        return task.subset(min(n, len(task))) if n is not None else task
    if path.exists():
        raise ValueError(f"cannot load task from {path}: expected a .csv or .jsonl file")
    raise ValueError(f"unknown task {str(name_or_path)!r}; valid names: {', '.join(TASK_INFO)} "
                     "(or the path of a .csv / .jsonl file)")


def all_words() -> set[str]:
    """Union of every built-in task's ``words()`` (for building word-level tokenizers)."""
    out: set[str] = set()
    for module in _loaded("TASK_MODULES").values():
        out |= module.words()
    return out
