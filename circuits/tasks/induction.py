"""Induction (Olsson et al. 2022, "In-context Learning and Induction Heads"): copy a repeated sequence.

Token-level task. A sequence ``seq`` of ``seq_len`` distinct tokens is drawn from a token pool; the clean
prompt is ``[bos?] + seq + seq[:-1]`` and the answer is ``seq[-1]`` (predicted at the last position, which
holds ``seq[-2]``: an induction head finds the earlier ``seq[-2]`` and copies the token after it).
The corrupted prompt is ``[bos?] + seq + seq2`` where ``seq2`` is a fresh sequence of ``seq_len - 1``
distinct pool tokens disjoint from ``seq`` (nothing repeats, so induction has nothing to copy). Clean and
corrupted differ exactly in the second half.

Wrong answer: one random token of ``seq`` other than the answer (the documented choice: a plausible
in-context token that is not the one induction predicts). Metric ``answer_logprob``.

The pool defaults to the tokens of the shipped common words (data/common_words.txt) that are single tokens
with a leading space; pass ``vocab_ids`` to draw from any token ids instead.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from .base import Task
from .build import encode, pad_id_for, read_word_list, resolve_bos, single_token_words, tokenizer_label

__all__ = ["common_words", "generate_examples", "make_induction", "words", "default_vocab_ids"]


def common_words() -> tuple[str, ...]:
    """The shipped common-word list (data/common_words.txt)."""
    return read_word_list("common_words.txt")


def _sequences(rng: random.Random, pool: Sequence, seq_len: int) -> Iterator[tuple[list, list, Any]]:
    """Yield (seq, seq2, wrong) triples: seq of seq_len distinct items, seq2 of seq_len-1 items disjoint from seq."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    if len(pool) < 2 * seq_len - 1:
        raise ValueError(f"induction needs a pool of at least 2*seq_len-1 = {2 * seq_len - 1} distinct tokens, "
                         f"got {len(pool)}")
    while True:
        draw = rng.sample(pool, 2 * seq_len - 1)
        seq, seq2 = draw[:seq_len], draw[seq_len:]
        wrong = rng.choice(seq[:-1])
        yield seq, seq2, wrong


def generate_examples(n: int = 100, seed: int = 0, seq_len: int = 10) -> list[dict]:
    """``n`` word-level examples (keys clean, corrupted, answers, wrong): words joined by single spaces, each
    prompt starting with a space (" w1 w2 ... w1 ..."). For word-level tokenizers; :func:`make_induction` is
    token-level."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    stream = _sequences(random.Random(seed), common_words(), seq_len)
    out = []
    for _ in range(n):
        seq, seq2, wrong = next(stream)
        out.append({
            "clean": "".join(" " + w for w in seq + seq[:-1]),
            "corrupted": "".join(" " + w for w in seq + seq2),
            "answers": [" " + seq[-1]],
            "wrong": [" " + wrong],
        })
    return out


def default_vocab_ids(tokenizer: Any) -> list[int]:
    """Token ids of the shipped common words that are single tokens (with a leading space) for ``tokenizer``."""
    kept, _ = single_token_words(tokenizer, common_words(), context="Then")
    base = encode(tokenizer, "Then")
    ids = [encode(tokenizer, "Then " + w)[len(base)] for w in kept]
    return list(dict.fromkeys(ids))


def make_induction(tokenizer: Any, n: int = 100, seed: int = 0, seq_len: int = 10,
                   vocab_ids: Sequence[int] | None = None, prepend_bos: bool | None = None) -> Task:
    """Induction task of ``n`` token-level examples (``task.clean``/``task.corrupted`` are empty lists)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pool = list(dict.fromkeys(int(i) for i in vocab_ids)) if vocab_ids is not None else default_vocab_ids(tokenizer)
    if vocab_ids is None and len(pool) < 2 * seq_len - 1:
        raise ValueError(f"induction: only {len(pool)} shipped common words are single tokens for tokenizer "
                         f"{tokenizer_label(tokenizer)}; pass vocab_ids=... to choose the token pool")
    bos = resolve_bos(tokenizer, prepend_bos)
    prefix = [bos] if bos is not None else []
    stream = _sequences(random.Random(seed), pool, seq_len)
    clean_ids, corrupted_ids, answers, wrong = [], [], [], []
    for _ in range(n):
        seq, seq2, w = next(stream)
        clean_ids.append(prefix + seq + seq[:-1])
        corrupted_ids.append(prefix + seq + seq2)
        answers.append([seq[-1]])
        wrong.append([w])
    meta = {"seed": seed, "seq_len": seq_len, "pool_size": len(pool), "prepend_bos": bos is not None,
            "tokenizer": tokenizer_label(tokenizer), "dropped": {},
            "vocab": "vocab_ids" if vocab_ids is not None else "common_words.txt",
            "wrong_answer": "a random other token of the repeated sequence",
            "source": "Olsson et al. 2022 (induction heads)"}
    return Task(name="induction", clean=[], corrupted=[], clean_ids=clean_ids, corrupted_ids=corrupted_ids,
                answers=answers, wrong=wrong, metric="answer_logprob", pad_id=pad_id_for(tokenizer), meta=meta)


def words() -> set[str]:
    """Every whitespace-separated word an induction prompt or answer (word-level form) can contain."""
    return set(common_words())
