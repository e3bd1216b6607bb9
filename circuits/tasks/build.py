"""What every task generator shares: tokenizer rules, word lists and building a checked Task from text examples.

Tokenizer rules (shared by all generators and by the CSV/JSONL loaders):

* text is encoded with ``tokenizer(text, add_special_tokens=False)["input_ids"]``; a BOS token is added
  explicitly by :func:`resolve_bos` (``prepend_bos=None`` means: prepend when the tokenizer has a
  ``bos_token_id`` that differs from its ``eos_token_id``; GPT-2's BOS is its EOS, so GPT-2 gets none);
* an answer string is valid for a prompt when ``encode(prompt + answer)`` is ``encode(prompt)`` plus exactly
  one token (:func:`continuation_token`); this works for byte-level BPE and SentencePiece alike;
* the pad id is ``pad_token_id``, else ``eos_token_id``, else 0 (:func:`pad_id_for`).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .base import DATA_DIR, Task

__all__ = [
    "read_word_list",
    "encode",
    "encode_many",
    "continuation_token",
    "single_token_words",
    "resolve_bos",
    "pad_id_for",
    "tokenizer_label",
    "build_task",
    "template_words",
    "take",
]


def read_word_list(filename: str) -> tuple[str, ...]:
    """Read a shipped word list from :data:`DATA_DIR`: one entry per line, ``#`` comments and blanks skipped,
    duplicates removed (first occurrence kept)."""
    lines = (DATA_DIR / filename).read_text(encoding="utf-8").splitlines()
    entries = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return tuple(dict.fromkeys(entries))


def tokenizer_label(tokenizer: Any) -> str:
    """A short human-readable name for a tokenizer, for error messages."""
    name = getattr(tokenizer, "name_or_path", "") or ""
    return f"{type(tokenizer).__name__}({name!r})" if name else type(tokenizer).__name__


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without any special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_many(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of several texts (one batched tokenizer call) without special tokens."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def continuation_token(tokenizer: Any, prompt: str, answer: str, prompt_ids: Sequence[int] | None = None) -> int | None:
    """The single token that ``answer`` adds after ``prompt``, or None when it is not exactly one token.

    ``encode(prompt + answer)`` must equal ``encode(prompt)`` plus one extra token (prefix unchanged).
    """
    base = list(prompt_ids) if prompt_ids is not None else encode(tokenizer, prompt)
    full = encode(tokenizer, prompt + answer)
    if len(full) == len(base) + 1 and full[: len(base)] == base:
        return full[-1]
    return None


def single_token_words(tokenizer: Any, words: Iterable[str], context: str = "Then", prefix: str = " ") -> tuple[
    tuple[str, ...], tuple[str, ...]]:
    """Split ``words`` into those that are one token after ``context`` (as ``prefix + word``) and the rest.

    Returns ``(kept, excluded)``, both in input order.
    """
    words = list(words)
    base = encode(tokenizer, context)
    fulls = encode_many(tokenizer, [context + prefix + w for w in words])
    kept, excluded = [], []
    for w, full in zip(words, fulls):
        ok = len(full) == len(base) + 1 and full[: len(base)] == base
        (kept if ok else excluded).append(w)
    return tuple(kept), tuple(excluded)


def resolve_bos(tokenizer: Any, prepend_bos: bool | None = None) -> int | None:
    """The BOS id to prepend, or None.

    ``prepend_bos=None`` (the default everywhere) means: prepend when the tokenizer has a ``bos_token_id``
    different from its ``eos_token_id`` (Llama/SentencePiece style); GPT-2-style tokenizers, whose BOS is the
    EOS token, get no BOS. ``True`` forces it (ValueError if the tokenizer has no BOS), ``False`` disables it.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    if prepend_bos is None:
        return bos if (bos is not None and bos != eos) else None
    if prepend_bos:
        if bos is None:
            raise ValueError(f"prepend_bos=True but tokenizer {tokenizer_label(tokenizer)} has no bos_token_id")
        return bos
    return None


def pad_id_for(tokenizer: Any) -> int:
    """``pad_token_id``, else ``eos_token_id``, else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


# --------------------------------------------------------------------------------------------------------------
# Building a Task from string examples (shared by all string-level generators)
# --------------------------------------------------------------------------------------------------------------

REASON_ANSWER = "answer is not a single token after the prompt"
REASON_WRONG = "wrong answer is not a single token after the prompt"
REASON_LENGTH = "clean and corrupted prompts tokenize to different lengths"
REASON_OVERLAP = "answer and wrong answer are the same token"


@dataclass(frozen=True)
class _Encoded:
    clean: str
    corrupted: str
    clean_ids: list[int]
    corrupted_ids: list[int]
    answers: list[int]
    wrong: list[int]


def _encode_examples(tokenizer: Any, examples: Sequence[Mapping[str, Any]], bos: int | None,
                     ) -> tuple[list[_Encoded], Counter]:
    """Tokenize string examples; return the valid ones and a Counter of drop reasons."""
    cleans = [ex["clean"] for ex in examples]
    corrupts = [ex["corrupted"] for ex in examples]
    clean_ids = encode_many(tokenizer, cleans)
    corrupt_ids = encode_many(tokenizer, corrupts)
    # All (prompt + answer) continuations in one batched call, unless ids are given precomputed.
    queries: list[str] = []
    for ex in examples:
        if "answer_ids" not in ex:
            queries += [ex["clean"] + a for a in ex["answers"]]
        if "wrong_ids" not in ex:
            queries += [ex["clean"] + w for w in ex["wrong"]]
    fulls = iter(encode_many(tokenizer, queries))

    def continuation_ids(base: list[int], count: int) -> list[int | None]:
        out: list[int | None] = []
        for _ in range(count):
            full = next(fulls)
            ok = len(full) == len(base) + 1 and full[: len(base)] == base
            out.append(full[-1] if ok else None)
        return out

    kept: list[_Encoded] = []
    dropped: Counter = Counter()
    prefix = [bos] if bos is not None else []
    for ex, c_ids, k_ids in zip(examples, clean_ids, corrupt_ids):
        ans = list(ex["answer_ids"]) if "answer_ids" in ex else continuation_ids(c_ids, len(ex["answers"]))
        wrg = list(ex["wrong_ids"]) if "wrong_ids" in ex else continuation_ids(c_ids, len(ex["wrong"]))
        if any(a is None for a in ans):
            dropped[REASON_ANSWER] += 1
        elif any(w is None for w in wrg):
            dropped[REASON_WRONG] += 1
        elif len(c_ids) != len(k_ids):
            dropped[REASON_LENGTH] += 1
        elif set(ans) & set(wrg):
            dropped[REASON_OVERLAP] += 1
        else:
            kept.append(_Encoded(ex["clean"], ex["corrupted"], prefix + c_ids, prefix + k_ids,
                                 list(dict.fromkeys(ans)), list(dict.fromkeys(wrg))))
    return kept, dropped


def build_task(
    name: str,
    stream: Iterator[dict],
    n: int,
    tokenizer: Any,
    metric: str,
    *,
    prepend_bos: bool | None = None,
    meta: dict | None = None,
    max_attempts: int | None = None,
) -> Task:
    """Pull string examples from ``stream`` and tokenize them until ``n`` are valid.

    Each example is a dict with ``clean``, ``corrupted``, ``answers`` (list of continuation strings) and
    ``wrong`` (list), optionally ``answer_ids`` / ``wrong_ids`` to skip the continuation check. Examples whose
    answers are not single tokens or whose clean/corrupted token lengths differ are dropped and replaced by
    new ones drawn from the stream, in stream order (at most ``max_attempts`` examples are drawn in total,
    default ``4 * n + 100``). Drop counts by reason go to ``task.meta["dropped"]`` and are reported with
    ``warnings.warn``; if nothing survives, ``ValueError`` says why and names the tokenizer.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    max_attempts = max_attempts if max_attempts is not None else 4 * n + 100
    bos = resolve_bos(tokenizer, prepend_bos)
    kept: list[_Encoded] = []
    dropped: Counter = Counter()
    drawn = 0
    while len(kept) < n and drawn < max_attempts:
        want = min(n - len(kept), max_attempts - drawn)
        examples = [next(stream) for _ in range(want)]
        drawn += len(examples)
        good, bad = _encode_examples(tokenizer, examples, bos)
        kept += good
        dropped += bad
    kept = kept[:n]
    label = tokenizer_label(tokenizer)
    if not kept:
        reasons = "; ".join(f"{count} x {reason}" for reason, count in dropped.items())
        raise ValueError(
            f"task {name!r}: all {drawn} generated examples were dropped for tokenizer {label} ({reasons}). "
            "This tokenizer cannot represent the task with single-token answers and aligned clean/corrupted prompts."
        )
    n_dropped = sum(dropped.values())
    if n_dropped:
        reasons = "; ".join(f"{count} x {reason}" for reason, count in dropped.items())
        warnings.warn(f"task {name!r}: dropped {n_dropped} of {drawn} generated examples for tokenizer {label} "
                      f"({reasons}); kept {len(kept)}", stacklevel=3)
    if len(kept) < n:
        warnings.warn(f"task {name!r}: only {len(kept)} of the requested {n} examples could be generated for "
                      f"tokenizer {label}", stacklevel=3)
    info = dict(meta or {})
    info.update({"n_requested": n, "n_generated": drawn, "dropped": dict(dropped), "tokenizer": label,
                 "prepend_bos": bos is not None})
    return Task(
        name=name,
        clean=[e.clean for e in kept],
        corrupted=[e.corrupted for e in kept],
        clean_ids=[e.clean_ids for e in kept],
        corrupted_ids=[e.corrupted_ids for e in kept],
        answers=[e.answers for e in kept],
        wrong=[e.wrong for e in kept],
        metric=metric,
        pad_id=pad_id_for(tokenizer),
        meta=info,
    )


def template_words(templates: Iterable[str], fillers: Mapping[str, Iterable[str]]) -> set[str]:
    """Every whitespace-separated word that ``templates`` can produce when each ``{slot}`` is filled from
    ``fillers[slot]`` (a word holds at most one slot, possibly with punctuation around it)."""
    options = {slot: tuple(values) for slot, values in fillers.items()}
    out: set[str] = set()
    for template in templates:
        for word in template.split():
            slots = [s for s in options if "{" + s + "}" in word]
            if not slots:
                out.add(word)
                continue
            if len(slots) > 1:
                raise ValueError(f"template word {word!r} holds more than one slot")
            slot = slots[0]
            out.update(word.replace("{" + slot + "}", value) for value in options[slot])
    return out


def take(stream: Iterator[dict], n: int) -> list[dict]:
    """The first ``n`` examples of a generator stream."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [next(stream) for _ in range(n)]

