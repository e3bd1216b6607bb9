'''Docstring (Heimersheim & Janiak 2023, "A circuit for Python docstrings in a 4-layer attention-only
transformer"; the ACDC paper's docstring benchmark).

Clean prompt (reST style), predicting the next parameter name after the last ``:param``::

    def target(self, table, result, check, results, content, code):
        """light health product

        :param check: health animal
        :param results: age chapter
        :param

-> " content". Layout (ACDC's benchmark settings): the def has 2 prefix parameters, 3 "matching" parameters
and 1 suffix parameter; the docstring documents the first 2 matching ones; the answer is the 3rd matching
one. Wrong answers: the other parameter names of the def. Metric ``logit_diff``.

Corruptions (names from the authors' generator; all keep the token layout):

* ``random_random`` (default, as in ACDC's released benchmark): the 3 matching def parameters and the 2
  documented names are replaced by 5 fresh random names.
* ``random_def``: the first 2 matching def parameters are replaced by fresh random names (the docstring no
  longer matches the def; the answer parameter stays).
* ``random_doc``: the 2 documented names are replaced by fresh random names.
'''

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from .base import Task
from .build import build_task, read_word_list, single_token_words, take, tokenizer_label

__all__ = ["CORRUPTIONS", "identifiers", "description_words", "render", "generate_examples", "make_docstring",
           "words"]

CORRUPTIONS = ("random_random", "random_def", "random_doc")
N_PREFIX, N_MATCH, N_SUFFIX = 2, 3, 1
N_DESC, N_ARG_DESC = 3, 2


def identifiers() -> tuple[str, ...]:
    """The shipped identifier list used for method and parameter names (data/docstring_names.txt)."""
    return read_word_list("docstring_names.txt")


def description_words() -> tuple[str, ...]:
    """The shipped filler nouns for descriptions (data/docstring_words.txt)."""
    return read_word_list("docstring_words.txt")


def render(method: str, def_args: Sequence[str], doc_args: Sequence[str], desc: Sequence[str],
           arg_descs: Sequence[Sequence[str]]) -> str:
    """The prompt text: a def line, a docstring summary, one ``:param`` line per doc arg, then ``:param``."""
    lines = [f"def {method}(self, {', '.join(def_args)}):", f'    """{" ".join(desc)}', ""]
    lines += [f"    :param {a}: {' '.join(d)}" for a, d in zip(doc_args, arg_descs)]
    lines.append("    :param")
    return "\n".join(lines)


def _stream(rng: random.Random, names: Sequence[str], fillers: Sequence[str], corruption: str) -> Iterator[dict]:
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {corruption!r}")
    n_names = 1 + N_PREFIX + N_MATCH + N_SUFFIX + N_MATCH + (N_MATCH - 1)
    if len(names) < n_names:
        raise ValueError(f"docstring needs at least {n_names} distinct single-token identifiers, got {len(names)}")
    while True:
        method, *rest = rng.sample(names, n_names)
        prefix, rest = rest[:N_PREFIX], rest[N_PREFIX:]
        match, rest = rest[:N_MATCH], rest[N_MATCH:]
        suffix, rest = rest[:N_SUFFIX], rest[N_SUFFIX:]
        rand_def, rand_doc = rest[:N_MATCH], rest[N_MATCH:]
        desc = rng.sample(fillers, N_DESC)
        arg_descs = [rng.sample(fillers, N_ARG_DESC) for _ in range(N_MATCH - 1)]
        def_args, doc_args = prefix + match + suffix, match[:-1]
        if corruption == "random_random":
            c_def, c_doc = prefix + rand_def + suffix, rand_doc
        elif corruption == "random_def":
            c_def, c_doc = prefix + rand_doc + match[-1:] + suffix, doc_args
        else:
            c_def, c_doc = def_args, rand_doc
        answer = match[-1]
        yield {
            "clean": render(method, def_args, doc_args, desc, arg_descs),
            "corrupted": render(method, c_def, c_doc, desc, arg_descs),
            "answers": [" " + answer],
            "wrong": [" " + a for a in def_args if a != answer],
        }


def generate_examples(n: int = 100, seed: int = 0, corruption: str = "random_random") -> list[dict]:
    """``n`` string-level docstring examples (keys clean, corrupted, answers, wrong)."""
    return take(_stream(random.Random(seed), identifiers(), description_words(), corruption), n)


def make_docstring(tokenizer: Any, n: int = 100, seed: int = 0, corruption: str = "random_random",
                   prepend_bos: bool | None = None) -> Task:
    """Docstring task of ``n`` examples for ``tokenizer``; identifiers that are not single tokens are left out."""
    names, excluded = single_token_words(tokenizer, identifiers(), context="def f(self,")
    meta = {"seed": seed, "corruption": corruption, "identifiers_excluded": list(excluded),
            "layout": {"def_prefix": N_PREFIX, "matching": N_MATCH, "def_suffix": N_SUFFIX,
                       "summary_words": N_DESC, "param_desc_words": N_ARG_DESC},
            "source": "Heimersheim & Janiak 2023 (docstring); ACDC benchmark settings"}
    try:
        stream = _stream(random.Random(seed), names, description_words(), corruption)
        next(_stream(random.Random(seed), names, description_words(), corruption))  # validate settings early
    except ValueError as err:
        raise ValueError(f"{err} (tokenizer {tokenizer_label(tokenizer)})") from None
    return build_task("docstring", stream, n, tokenizer, "logit_diff", prepend_bos=prepend_bos, meta=meta)


def words() -> set[str]:
    """Every whitespace-separated word a docstring prompt or answer can contain."""
    names, fillers = identifiers(), description_words()
    out = {"def", ":param"} | set(names) | set(fillers)
    for a in names:
        out |= {f"{a}(self,", f"{a},", f"{a}):", f"{a}:"}
    out |= {'"""' + w for w in fillers}
    return out
