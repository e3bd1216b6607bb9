"""Greater-than (Hanna, Liu, Variengien 2023, "How does GPT-2 compute greater-than?").

Clean: "The war lasted from the year 1732 to the year 17" -> a two-digit continuation YY' > 32.
Corrupted: the same sentence with YY = 01 ("... from the year 1701 to the year 17"), so only the YY token differs.
Answers: the tokens of the two-digit strings "YY'" with YY' > YY; wrong: those with YY' <= YY (for GPT-2 the
100 tokens "00".."99"). Metric ``prob_diff`` = sum of p(YY' > YY) - sum of p(YY' <= YY).

The tokenizer must have a single token for each two-digit string "00".."99" (GPT-2 does; SentencePiece
tokenizers that split digits do not, and get a ValueError). Years whose clean or corrupted form does not
tokenize as [.. " XX", "YY"] (e.g. GPT-2 has single tokens for " 1600" or " 1280") are not sampled.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from .base import Task
from .build import build_task, encode, encode_many, read_word_list, take, tokenizer_label

__all__ = ["TEMPLATE", "CENTURIES", "nouns", "generate_examples", "make_greater_than", "words", "year_tokens"]

TEMPLATE = "The {noun} lasted from the year {XX}{YY} to the year {XX}"
CENTURIES: tuple[int, ...] = tuple(range(11, 18))  # XX in 11..17
YY_RANGE: tuple[int, ...] = tuple(range(2, 99))   # YY in 02..98
CORRUPT_YY = 1


def nouns() -> tuple[str, ...]:
    """The shipped event nouns (data/gt_nouns.txt)."""
    return read_word_list("gt_nouns.txt")


def _example(noun: str, xx: int, yy: int) -> dict:
    return {
        "clean": TEMPLATE.format(noun=noun, XX=xx, YY=f"{yy:02d}"),
        "corrupted": TEMPLATE.format(noun=noun, XX=xx, YY=f"{CORRUPT_YY:02d}"),
        "answers": [f"{v:02d}" for v in range(yy + 1, 100)],
        "wrong": [f"{v:02d}" for v in range(0, yy + 1)],
        "year": 100 * xx + yy,
        "noun": noun,
    }


def _stream(rng: random.Random, years: Sequence[tuple[int, int]], pool: Sequence[str]) -> Iterator[dict]:
    while True:
        noun = rng.choice(pool)
        xx, yy = rng.choice(years)
        yield _example(noun, xx, yy)


def _all_years() -> list[tuple[int, int]]:
    return [(xx, yy) for xx in CENTURIES for yy in YY_RANGE]


def generate_examples(n: int = 100, seed: int = 0) -> list[dict]:
    """``n`` string-level examples (keys clean, corrupted, answers, wrong, year, noun); no tokenizer needed.

    With a tokenizer, :func:`make_greater_than` samples only the years that tokenizer splits as XX|YY, so its
    examples equal these only when every year is valid.
    """
    return take(_stream(random.Random(seed), _all_years(), nouns()), n)


def year_tokens(tokenizer: Any) -> list[int]:
    """Token ids of "00".."99"; ValueError if any two-digit string is not a single token."""
    ids = encode_many(tokenizer, [f"{v:02d}" for v in range(100)])
    bad = [f"{v:02d}" for v, t in enumerate(ids) if len(t) != 1]
    if bad:
        raise ValueError(
            f"greater-than: tokenizer {tokenizer_label(tokenizer)} does not split years into two-digit tokens "
            f"({len(bad)} of the 100 strings '00'..'99' are not single tokens, e.g. {bad[:5]}); the task's "
            "answer set (the 100 two-digit year endings) cannot be defined for it"
        )
    return [t[0] for t in ids]


def valid_years(tokenizer: Any, table: Sequence[int]) -> list[tuple[int, int]]:
    """(XX, YY) pairs whose clean and corrupted years tokenize as [..., " XX", "YY"] in the prompt."""
    out = []
    for xx in CENTURIES:
        head = encode(tokenizer, f"The war lasted from the year {xx}")
        for yy in YY_RANGE:
            texts = [f"The war lasted from the year {xx}{yy:02d}", f"The war lasted from the year {xx}{CORRUPT_YY:02d}"]
            clean, corrupt = encode_many(tokenizer, texts)
            if clean == head + [table[yy]] and corrupt == head + [table[CORRUPT_YY]]:
                out.append((xx, yy))
    return out


def make_greater_than(tokenizer: Any, n: int = 100, seed: int = 0, prepend_bos: bool | None = None) -> Task:
    """Greater-than task of ``n`` examples for ``tokenizer`` (answer sets from :func:`year_tokens`)."""
    table = year_tokens(tokenizer)
    years = valid_years(tokenizer, table)
    if not years:
        raise ValueError(f"greater-than: no year 11YY..17YY tokenizes as ' XX' + 'YY' for tokenizer "
                         f"{tokenizer_label(tokenizer)}; the clean and corrupted prompts cannot be aligned")
    # The end of the prompt must also be "... year XX" + "YY" -> one extra token; check once per century.
    for xx in sorted({x for x, _ in years}):
        prompt = f"The war lasted from the year 1750 to the year {xx}"
        ids = encode(tokenizer, prompt)
        if encode(tokenizer, prompt + "50") != ids + [table[50]]:
            raise ValueError(f"greater-than: after '... to the year {xx}' the continuation '50' is not the single "
                             f"token '50' for tokenizer {tokenizer_label(tokenizer)}")

    def with_ids(stream: Iterator[dict]) -> Iterator[dict]:
        for ex in stream:
            yy = ex["year"] % 100
            yield {**ex, "answer_ids": table[yy + 1:], "wrong_ids": table[: yy + 1]}

    excluded = len(_all_years()) - len(years)
    meta = {"seed": seed, "years_excluded": excluded, "source": "Hanna et al. 2023 (greater-than)",
            "corruption": "YY = 01", "year_tokens": table}
    stream = with_ids(_stream(random.Random(seed), years, nouns()))
    return build_task("greater-than", stream, n, tokenizer, "prob_diff", prepend_bos=prepend_bos, meta=meta)


def words() -> set[str]:
    """Every whitespace-separated word a greater-than prompt or answer can contain."""
    fixed = {w for w in TEMPLATE.split() if "{" not in w}
    years = {f"{xx}{yy:02d}" for xx in CENTURIES for yy in range(100)}
    return fixed | set(nouns()) | years | {str(xx) for xx in CENTURIES} | {f"{v:02d}" for v in range(100)}
