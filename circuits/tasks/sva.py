"""Subject-verb agreement (the EAP-IG paper's SVA task, Hanna, Pezzelle & Belinkov 2024; after Finlayson et al.
2021, "Causal analysis of syntactic agreement mechanisms in neural language models").

Clean: "The author near the guards" -> a verb agreeing with the singular subject.
Answers: the verb forms agreeing with the subject (singular " is", " was", " has"; plural " are", " were",
" have"); wrong: the forms of the other number. Corruption: the subject's number is flipped ("The authors near
the guards"), the attractor noun and everything else stay, so only the subject token differs. Metric
``logit_diff`` (mean logit of the agreeing verbs minus mean logit of the disagreeing ones).

The attractor noun after the preposition has a random number of its own (half the time it mismatches the
subject, the classic agreement-attraction setting).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from .base import Task
from .build import build_task, read_word_list, single_token_words, take, tokenizer_label

__all__ = ["TEMPLATES", "SINGULAR_VERBS", "PLURAL_VERBS", "noun_pairs", "generate_examples", "make_sva", "words"]

TEMPLATES: tuple[str, ...] = (
    "The {subject} near the {attractor}",
    "The {subject} behind the {attractor}",
    "The {subject} next to the {attractor}",
    "The {subject} with the {attractor}",
    "The {subject} beside the {attractor}",
    "The {subject} across from the {attractor}",
)
SINGULAR_VERBS: tuple[str, ...] = ("is", "was", "has")
PLURAL_VERBS: tuple[str, ...] = ("are", "were", "have")


def noun_pairs() -> tuple[tuple[str, str], ...]:
    """(singular, plural) noun pairs from data/sva_nouns.txt."""
    pairs = []
    for line in read_word_list("sva_nouns.txt"):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"sva_nouns.txt: expected 'singular<TAB>plural', got {line!r}")
        pairs.append((parts[0], parts[1]))
    return tuple(pairs)


def _stream(rng: random.Random, pairs: Sequence[tuple[str, str]]) -> Iterator[dict]:
    if len(pairs) < 2:
        raise ValueError(f"SVA needs at least 2 noun pairs, got {len(pairs)}")
    sing = [" " + v for v in SINGULAR_VERBS]
    plur = [" " + v for v in PLURAL_VERBS]
    while True:
        template = rng.choice(TEMPLATES)
        subj, attr = rng.sample(pairs, 2)
        plural = rng.random() < 0.5
        attr_word = attr[rng.random() < 0.5]
        fill = dict(attractor=attr_word)
        yield {
            "clean": template.format(subject=subj[plural], **fill),
            "corrupted": template.format(subject=subj[not plural], **fill),
            "answers": plur if plural else sing,
            "wrong": sing if plural else plur,
            "plural": plural,
        }


def generate_examples(n: int = 100, seed: int = 0) -> list[dict]:
    """``n`` string-level SVA examples (keys clean, corrupted, answers, wrong, plural)."""
    return take(_stream(random.Random(seed), noun_pairs()), n)


def make_sva(tokenizer: Any, n: int = 100, seed: int = 0, prepend_bos: bool | None = None) -> Task:
    """SVA task of ``n`` examples; noun pairs whose two forms are not both single tokens are left out."""
    pairs = noun_pairs()
    ok_sing, _ = single_token_words(tokenizer, [s for s, _ in pairs], context="The")
    ok_plur, _ = single_token_words(tokenizer, [p for _, p in pairs], context="The")
    kept = tuple(p for p in pairs if p[0] in ok_sing and p[1] in ok_plur)
    if len(kept) < 2:
        raise ValueError(f"SVA: only {len(kept)} noun pairs have single-token singular and plural forms for "
                         f"tokenizer {tokenizer_label(tokenizer)}; at least 2 are needed")
    meta = {"seed": seed, "nouns_excluded": [p for p in pairs if p not in kept],
            "source": "Hanna et al. 2024 (EAP-IG) SVA task", "corruption": "subject number flipped"}
    return build_task("sva", _stream(random.Random(seed), kept), n, tokenizer, "logit_diff",
                      prepend_bos=prepend_bos, meta=meta)


def words() -> set[str]:
    """Every whitespace-separated word an SVA prompt or answer can contain."""
    nouns = [w for pair in noun_pairs() for w in pair]
    out = {w for t in TEMPLATES for w in t.split() if "{" not in w}
    return out | set(nouns) | set(SINGULAR_VERBS) | set(PLURAL_VERBS)
