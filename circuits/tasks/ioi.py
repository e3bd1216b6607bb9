"""Indirect object identification (Wang et al. 2023, "Interpretability in the Wild").

Clean: "When Mary and John went to the store, John gave a drink to" -> " Mary" (the indirect object, IO).
Two name orders: ABBA (IO first) and BABA (subject first). The answer is the IO name, the wrong answer the
subject (S) name; metric ``logit_diff`` = logit(IO) - logit(S).

Corruption (the paper's ABC dataset): the three name positions (the two names in the first clause and the
repeated subject) get three other random names, distinct from each other and from IO and S. Everything else
(template, place, object) stays, so with single-token names clean and corrupted differ at exactly those three
token positions.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from .base import Task
from .build import build_task, read_word_list, single_token_words, take, template_words, tokenizer_label

__all__ = ["TEMPLATES", "PLACES", "OBJECTS", "names", "generate_examples", "make_ioi", "words"]

# {A}: first name slot, {B}: second name slot, {S}: the repeated subject. Every template ends right before the
# indirect object.
TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "Then, {A} and {B} went to the {place}. {S} gave a {object} to",
    "After {A} and {B} went to the {place}, {S} gave a {object} to",
    "While {A} and {B} were working at the {place}, {S} gave a {object} to",
    "When {A} and {B} got a {object} at the {place}, {S} decided to give it to",
    "Then, {A} and {B} had a lot of fun at the {place}. {S} gave a {object} to",
    "While {A} and {B} were walking to the {place}, {S} handed a {object} to",
    "Afterwards, {A} and {B} went to the {place}. {S} brought a {object} to",
    "Friends {A} and {B} found a {object} at the {place}. {S} gave it to",
    "Then, {A} and {B} had a long argument. Afterwards {S} said to",
    "When {A} and {B} arrived at the {place}, {S} passed a {object} to",
    "After the meeting, {A} and {B} went to the {place}. {S} offered a {object} to",
)
PLACES: tuple[str, ...] = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
                           "park", "library", "beach", "market")
OBJECTS: tuple[str, ...] = ("drink", "snack", "book", "ring", "bone", "ball", "letter", "gift", "bottle", "key",
                            "flower", "basket", "computer")
ORDERS = ("ABBA", "BABA")


def names() -> tuple[str, ...]:
    """The shipped name list (male and female first names, data/names_*.txt)."""
    return tuple(dict.fromkeys(read_word_list("names_male.txt") + read_word_list("names_female.txt")))


def _stream(rng: random.Random, pool: tuple[str, ...], order: str) -> Iterator[dict]:
    if len(pool) < 5:
        raise ValueError(f"IOI needs at least 5 distinct names, got {len(pool)}")
    if order not in ("mixed",) + ORDERS:
        raise ValueError(f"order must be 'mixed', 'ABBA' or 'BABA', got {order!r}")
    while True:
        template = rng.choice(TEMPLATES)
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        io, s, c1, c2, c3 = rng.sample(pool, 5)
        this_order = rng.choice(ORDERS) if order == "mixed" else order
        first, second = (io, s) if this_order == "ABBA" else (s, io)
        fill = dict(place=place, object=obj)
        yield {
            "clean": template.format(A=first, B=second, S=s, **fill),
            "corrupted": template.format(A=c1, B=c2, S=c3, **fill),
            "answers": [" " + io],
            "wrong": [" " + s],
            "io": io,
            "s": s,
            "order": this_order,
            "template": TEMPLATES.index(template),
        }


def generate_examples(n: int = 100, seed: int = 0, order: str = "mixed") -> list[dict]:
    """``n`` string-level IOI examples (keys clean, corrupted, answers, wrong, io, s, order, template).

    ``order``: "mixed" (each example ABBA or BABA at random), "ABBA" or "BABA".
    """
    return take(_stream(random.Random(seed), names(), order), n)


def make_ioi(tokenizer: Any, n: int = 100, seed: int = 0, order: str = "mixed", prepend_bos: bool | None = None
             ) -> Task:
    """IOI task of ``n`` examples for ``tokenizer``; names that are not single tokens for it are left out."""
    pool, excluded = single_token_words(tokenizer, names(), context="When Mary and")
    if len(pool) < 5:
        raise ValueError(f"IOI: only {len(pool)} of the shipped names are single tokens for tokenizer "
                         f"{tokenizer_label(tokenizer)}; at least 5 are needed")
    meta = {"order": order, "seed": seed, "names_excluded": list(excluded), "source": "Wang et al. 2023 (IOI)",
            "corruption": "ABC: three other distinct names at the three name positions"}
    return build_task("ioi", _stream(random.Random(seed), pool, order), n, tokenizer, "logit_diff",
                      prepend_bos=prepend_bos, meta=meta)


def words() -> set[str]:
    """Every whitespace-separated word an IOI prompt or answer can contain."""
    all_names = names()
    fill = {"A": all_names, "B": all_names, "S": all_names, "place": PLACES, "object": OBJECTS}
    return template_words(TEMPLATES, fill) | set(all_names)
