"""Gendered pronoun (the EAP-IG paper's task, Hanna, Pezzelle & Belinkov 2024; after Mathwin et al. 2023,
"Identifying a preliminary circuit for predicting gendered pronouns in GPT-2 small").

Clean: "So Mary is such a good friend, isn't" -> " she"; "Then John went to the store because" -> " he".
Answer: the pronoun matching the name's gender; wrong: the other one. Corruption: the name is replaced by a
random name of the other gender (same number of tokens: both single tokens), so only the name token differs.
Metric ``logit_diff``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from .base import Task
from .build import build_task, read_word_list, single_token_words, take, template_words, tokenizer_label

__all__ = ["TEMPLATES", "ROLES", "male_names", "female_names", "generate_examples", "make_gender", "words"]

TEMPLATES: tuple[str, ...] = (
    "So {name} is such a good {role}, isn't",
    "Then {name} went to the store because",
    "After lunch, {name} said that",
    "Yesterday {name} was very tired, so",
    "When {name} came home,",
    "Everyone knows that {name} is a great {role} and",
    "Because {name} missed the bus,",
    "Last week {name} called me and said that",
)
ROLES: tuple[str, ...] = ("friend", "cook", "teacher", "student", "doctor", "writer", "player", "neighbor",
                          "driver", "singer")
PRONOUNS = {"male": " he", "female": " she"}


def male_names() -> tuple[str, ...]:
    """data/names_male.txt."""
    return read_word_list("names_male.txt")


def female_names() -> tuple[str, ...]:
    """data/names_female.txt."""
    return read_word_list("names_female.txt")


def _stream(rng: random.Random, male: Sequence[str], female: Sequence[str]) -> Iterator[dict]:
    if not male or not female:
        raise ValueError("the gendered-pronoun task needs at least one male and one female name")
    while True:
        template = rng.choice(TEMPLATES)
        role = rng.choice(ROLES)
        gender = rng.choice(("male", "female"))
        own, other = (male, female) if gender == "male" else (female, male)
        name, swap = rng.choice(own), rng.choice(other)
        other_gender = "female" if gender == "male" else "male"
        yield {
            "clean": template.format(name=name, role=role),
            "corrupted": template.format(name=swap, role=role),
            "answers": [PRONOUNS[gender]],
            "wrong": [PRONOUNS[other_gender]],
            "gender": gender,
            "name": name,
        }


def generate_examples(n: int = 100, seed: int = 0) -> list[dict]:
    """``n`` string-level examples (keys clean, corrupted, answers, wrong, gender, name)."""
    return take(_stream(random.Random(seed), male_names(), female_names()), n)


def make_gender(tokenizer: Any, n: int = 100, seed: int = 0, prepend_bos: bool | None = None) -> Task:
    """Gendered-pronoun task of ``n`` examples; names that are not single tokens for ``tokenizer`` are left out."""
    male, male_out = single_token_words(tokenizer, male_names(), context="Then")
    female, female_out = single_token_words(tokenizer, female_names(), context="Then")
    if not male or not female:
        raise ValueError(f"gender: tokenizer {tokenizer_label(tokenizer)} has no single-token "
                         f"{'male' if not male else 'female'} name in the shipped lists")
    meta = {"seed": seed, "names_excluded": list(male_out + female_out),
            "source": "Hanna et al. 2024 (EAP-IG) gendered-pronoun task; Mathwin et al. 2023",
            "corruption": "name replaced by a name of the other gender"}
    return build_task("gender", _stream(random.Random(seed), male, female), n, tokenizer, "logit_diff",
                      prepend_bos=prepend_bos, meta=meta)


def words() -> set[str]:
    """Every whitespace-separated word a gendered-pronoun prompt or answer can contain."""
    names = male_names() + female_names()
    return template_words(TEMPLATES, {"name": names, "role": ROLES}) | {"he", "she"}
