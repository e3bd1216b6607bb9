"""Story pronoun: which pronoun continues a children's-story sentence about a girl or a boy.

A simple gendered-pronoun task in the style of the EAP-IG paper's, written for story models
(TinyStories, the zoo's ``stories260k``) whose tokenizers split names into pieces: the gender
is carried by a role noun ("girl"/"boy", "princess"/"prince", ...) instead of a name.

Clean: "Once upon a time, there was a little girl. Every day," -> " she" (wrong: " he").
Corruption: the role noun is replaced by its counterpart of the other gender ("boy"), so only
the noun's tokens differ (pairs whose tokenizations differ in length are dropped).
Metric ``logit_diff``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from .base import Task
from .build import build_task, encode, take, template_words, tokenizer_label

__all__ = ["TEMPLATES", "PAIRS", "generate_examples", "make_pronoun", "words"]

TEMPLATES: tuple[str, ...] = (
    "Once upon a time, there was a little {noun}. Every day,",
    "Once upon a time, there was a {noun} who liked to play. One day,",
    "There was a {noun} who lived in a big house. One day,",
    "The {noun} was very happy. Then",
    "Once upon a time, a {noun} went to the park. In the park,",
    "The little {noun} had a red ball. Every morning,",
    "One day, a {noun} found a big box. Inside the box,",
    "There once was a kind {noun}. After lunch,",
)
PAIRS: tuple[tuple[str, str], ...] = (  # (female, male)
    ("girl", "boy"),
    ("princess", "prince"),
    ("mom", "dad"),
    ("sister", "brother"),
    ("queen", "king"),
    ("woman", "man"),
)
PRONOUNS = {"female": " she", "male": " he"}


def _stream(rng: random.Random, pairs: Sequence[tuple[str, str]] = PAIRS) -> Iterator[dict]:
    if not pairs:
        raise ValueError("the pronoun task needs at least one (female, male) noun pair")
    while True:
        template = rng.choice(TEMPLATES)
        female, male = rng.choice(pairs)
        gender = rng.choice(("female", "male"))
        noun, other = (female, male) if gender == "female" else (male, female)
        yield {
            "clean": template.format(noun=noun),
            "corrupted": template.format(noun=other),
            "answers": [PRONOUNS[gender]],
            "wrong": [PRONOUNS["male" if gender == "female" else "female"]],
        }


def generate_examples(n: int = 100, seed: int = 0) -> list[dict]:
    """``n`` string-level examples (keys clean, corrupted, answers, wrong)."""
    return take(_stream(random.Random(seed)), n)


def make_pronoun(tokenizer: Any, n: int = 100, seed: int = 0, prepend_bos: bool | None = None) -> Task:
    """Story-pronoun task of ``n`` examples for ``tokenizer``."""
    # keep the noun pairs that tokenize to the same length, so swapping them keeps positions aligned
    pairs = [p for p in PAIRS if len(encode(tokenizer, "The " + p[0])) == len(encode(tokenizer, "The " + p[1]))]
    if not pairs:
        raise ValueError(f"pronoun: no noun pair tokenizes to equal lengths for tokenizer {tokenizer_label(tokenizer)}")
    meta = {"seed": seed, "source": "gendered pronoun in the EAP-IG paper's style, with role nouns",
            "corruption": "role noun replaced by its other-gender counterpart",
            "pairs": [list(p) for p in pairs], "pairs_excluded": [list(p) for p in PAIRS if p not in pairs]}
    return build_task("pronoun", _stream(random.Random(seed), pairs), n, tokenizer, "logit_diff",
                      prepend_bos=prepend_bos, meta=meta)


def words() -> set[str]:
    """Every whitespace-separated word a story-pronoun prompt or answer can contain."""
    nouns = [w for pair in PAIRS for w in pair]
    return template_words(TEMPLATES, {"noun": nouns}) | {"he", "she"}
