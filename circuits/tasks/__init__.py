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
(see :mod:`circuits.tasks.custom`). :func:`gpt2_tokenizer` loads the GPT-2 tokenizer shipped with the package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from . import custom, docstring, gender, greater_than, induction, ioi, pronoun, sva
from .base import Batch, Task
from .custom import load_csv, load_jsonl
from .docstring import make_docstring
from .gender import make_gender
from .greater_than import make_greater_than
from .induction import make_induction
from .ioi import make_ioi
from .pronoun import make_pronoun
from .sva import make_sva

__all__ = [
    "Batch",
    "Task",
    "TASKS",
    "TASK_MODULES",
    "load_task",
    "load_csv",
    "load_jsonl",
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

TASKS: dict[str, Callable[..., Task]] = {
    "ioi": make_ioi,
    "greater-than": make_greater_than,
    "induction": make_induction,
    "docstring": make_docstring,
    "sva": make_sva,
    "gender": make_gender,
    "pronoun": make_pronoun,
}
"""Built-in task generators by name."""

TASK_MODULES = {
    "ioi": ioi,
    "greater-than": greater_than,
    "induction": induction,
    "docstring": docstring,
    "sva": sva,
    "gender": gender,
    "pronoun": pronoun,
}
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
    if isinstance(name_or_path, str) and _canonical(name_or_path) in TASKS:
        return TASKS[_canonical(name_or_path)](tokenizer, n=100 if n is None else n, seed=seed, **kw)
    path = Path(name_or_path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl"):
        if not path.exists():
            raise ValueError(f"task file does not exist: {path}")
        task = load_csv(path, tokenizer, **kw) if suffix == ".csv" else load_jsonl(path, tokenizer, **kw)
        return task.subset(min(n, len(task))) if n is not None else task
    if path.exists():
        raise ValueError(f"cannot load task from {path}: expected a .csv or .jsonl file")
    raise ValueError(f"unknown task {str(name_or_path)!r}; valid names: {', '.join(TASKS)} "
                     "(or the path of a .csv / .jsonl file)")


def all_words() -> set[str]:
    """Union of every built-in task's ``words()`` (for building word-level tokenizers)."""
    out: set[str] = set()
    for module in TASK_MODULES.values():
        out |= module.words()
    return out
