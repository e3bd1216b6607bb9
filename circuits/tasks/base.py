"""Task and Batch dataclasses, plus the tokenization helpers every task generator shares.

A :class:`Task` is a list of (clean prompt, corrupted prompt, answer set, wrong-answer set) examples in token-id
form. Clean and corrupted prompts of one example always have the same number of tokens, so that a patched
run can swap activations position by position. :meth:`Task.batches` turns it into left-padded
:class:`Batch` tensors whose scored position is the last one (``P - 1``).

Tokenizer rules (shared by all generators and by the CSV/JSONL loaders):

* text is encoded with ``tokenizer(text, add_special_tokens=False)["input_ids"]``; a BOS token is added
  explicitly by :func:`resolve_bos` (``prepend_bos=None`` means: prepend when the tokenizer has a
  ``bos_token_id`` that differs from its ``eos_token_id``; GPT-2's BOS is its EOS, so GPT-2 gets none);
* an answer string is valid for a prompt when ``encode(prompt + answer)`` is ``encode(prompt)`` plus exactly
  one token (:func:`continuation_token`); this works for byte-level BPE and SentencePiece alike;
* the pad id is ``pad_token_id``, else ``eos_token_id``, else 0 (:func:`pad_id_for`).
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from ..metrics import METRICS

__all__ = [
    "Batch",
    "Task",
    "as_batches",
    "DATA_DIR",
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

DATA_DIR: Path = Path(__file__).resolve().parent / "data"
"""Folder holding the shipped word lists (names, nouns, identifiers)."""


# --------------------------------------------------------------------------------------------------------------
# Batch
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """A left-padded batch of clean/corrupted prompts with their answer sets.

    Attributes:
        clean: ``[B, P]`` long, left-padded clean token ids.
        corrupted: ``[B, P]`` long, corrupted token ids, padded exactly like ``clean``.
        attention_mask: ``[B, P]`` long, 1 for real tokens, 0 for padding (shared by clean and corrupted).
        answers: ``[B, A]`` long, correct answer token ids, padded with -1 (``A >= 1``).
        wrong: ``[B, W]`` long, wrong-answer token ids, padded with -1 (``W >= 1``).
        answer_pos: ``[B]`` long, the position whose next-token logits are scored (``P - 1``).
    """

    clean: torch.Tensor
    corrupted: torch.Tensor
    attention_mask: torch.Tensor
    answers: torch.Tensor
    wrong: torch.Tensor
    answer_pos: torch.Tensor

    @property
    def position_ids(self) -> torch.Tensor:
        """``[B, P]`` positions counted from each example's first real token (0 on padding)."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    def to(self, device: torch.device | str) -> "Batch":
        """Return a copy with every tensor moved to ``device``."""
        return Batch(
            clean=self.clean.to(device),
            corrupted=self.corrupted.to(device),
            attention_mask=self.attention_mask.to(device),
            answers=self.answers.to(device),
            wrong=self.wrong.to(device),
            answer_pos=self.answer_pos.to(device),
        )

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def repeat(self, n: int) -> "Batch":
        """The batch stacked ``n`` times (mask-major rows, as K masks see it)."""
        if n == 1:
            return self
        return Batch(
            clean=self.clean.repeat(n, 1),
            corrupted=self.corrupted.repeat(n, 1),
            attention_mask=self.attention_mask.repeat(n, 1),
            answers=self.answers.repeat(n, 1),
            wrong=self.wrong.repeat(n, 1),
            answer_pos=self.answer_pos.repeat(n),
        )

    def at_answer(self) -> "Batch":
        """The batch as a metric sees it on logits cut to the answer positions (``[B, 1, V]``: answer_pos 0)."""
        return replace(self, answer_pos=torch.zeros_like(self.answer_pos))


def _pad_sets(sets: Sequence[Sequence[int]]) -> torch.Tensor:
    """Stack variable-size id sets into a ``[B, K]`` long tensor padded with -1."""
    width = max(len(s) for s in sets)
    out = torch.full((len(sets), width), -1, dtype=torch.long)
    for i, s in enumerate(sets):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out


# --------------------------------------------------------------------------------------------------------------
# Task
# --------------------------------------------------------------------------------------------------------------


def _show(ids: Sequence[int], text: str | None) -> str:
    shown = f"{len(ids)} tokens {list(ids)}"
    return f"{text!r} -> {shown}" if text is not None else shown


@dataclass
class Task:
    """A dataset of clean/corrupted prompt pairs with answer and wrong-answer token sets.

    ``clean`` / ``corrupted`` hold the prompt strings (empty lists for token-level tasks such as induction);
    ``clean_ids`` / ``corrupted_ids`` hold the token ids actually used (BOS included when prepended).
    ``answers[i]`` / ``wrong[i]`` are the token-id sets scored by the metric at the last prompt position.
    ``metric`` names the default metric in :data:`circuits.metrics.METRICS`.

    The constructor validates the data (see :meth:`validate`) and raises ``ValueError`` on an empty task or
    an example whose clean and corrupted prompts have different token lengths.
    """

    name: str
    clean: list[str]
    corrupted: list[str]
    clean_ids: list[list[int]]
    corrupted_ids: list[list[int]]
    answers: list[list[int]]
    wrong: list[list[int]]
    metric: str
    pad_id: int = 0
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ---- validation ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the invariants every consumer relies on; raise ``ValueError`` naming the bad example."""
        n = len(self.clean_ids)
        if n == 0:
            raise ValueError(f"dataset is empty: task {self.name!r} has no examples")
        for label, seq in (("corrupted_ids", self.corrupted_ids), ("answers", self.answers), ("wrong", self.wrong)):
            if len(seq) != n:
                raise ValueError(f"task {self.name!r}: {label} has {len(seq)} entries but clean_ids has {n}")
        for label, strings in (("clean", self.clean), ("corrupted", self.corrupted)):
            if strings and len(strings) != n:
                raise ValueError(
                    f"task {self.name!r}: {label} has {len(strings)} prompt strings but {n} tokenized examples "
                    "(use [] for token-level tasks)"
                )
        if self.metric not in METRICS:
            raise ValueError(
                f"task {self.name!r}: unknown metric {self.metric!r}; valid names: {', '.join(sorted(METRICS))}"
            )
        for i in range(n):
            c, k = self.clean_ids[i], self.corrupted_ids[i]
            if len(c) != len(k):
                ct = self.clean[i] if self.clean else None
                kt = self.corrupted[i] if self.corrupted else None
                raise ValueError(
                    f"task {self.name!r}, example {i}: clean and corrupted prompts have different token lengths "
                    f"({len(c)} vs {len(k)}); clean {_show(c, ct)}; corrupted {_show(k, kt)}"
                )
            if len(c) == 0:
                raise ValueError(f"task {self.name!r}, example {i}: empty prompt")
            if not self.answers[i]:
                raise ValueError(f"task {self.name!r}, example {i}: empty answer set")
            if not self.wrong[i]:
                raise ValueError(f"task {self.name!r}, example {i}: empty wrong-answer set")
            for label, ids in (("clean_ids", c), ("corrupted_ids", k), ("answers", self.answers[i]),
                               ("wrong", self.wrong[i])):
                if any((not isinstance(t, int)) or t < 0 for t in ids):
                    raise ValueError(f"task {self.name!r}, example {i}: {label} must be non-negative ints, got {ids}")
            overlap = set(self.answers[i]) & set(self.wrong[i])
            if overlap:
                raise ValueError(
                    f"task {self.name!r}, example {i}: token ids {sorted(overlap)} are both answers and wrong answers"
                )

    # ---- container protocol --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.clean_ids)

    def _select(self, indices: Sequence[int], **meta_updates: Any) -> "Task":
        """A new Task holding the examples at ``indices`` (in that order)."""
        pick = lambda xs: [xs[i] for i in indices] if xs else []  # noqa: E731
        meta = dict(self.meta)
        meta.update(meta_updates)
        return replace(
            self,
            clean=pick(self.clean),
            corrupted=pick(self.corrupted),
            clean_ids=[list(self.clean_ids[i]) for i in indices],
            corrupted_ids=[list(self.corrupted_ids[i]) for i in indices],
            answers=[list(self.answers[i]) for i in indices],
            wrong=[list(self.wrong[i]) for i in indices],
            meta=meta,
        )

    def subset(self, n: int) -> "Task":
        """The first ``n`` examples (``1 <= n <= len(self)``)."""
        if not 1 <= n <= len(self):
            raise ValueError(f"subset size must be between 1 and {len(self)} for task {self.name!r}, got {n}")
        return self._select(range(n))

    def split(self, test_fraction: float = 0.5, seed: int = 0) -> tuple["Task", "Task"]:
        """Split into ``(train, test)`` by a seeded shuffle; each part keeps the original example order.

        The test part gets ``round(len(self) * test_fraction)`` examples; both parts must be non-empty.
        """
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        n_test = int(round(len(self) * test_fraction))
        if n_test == 0 or n_test == len(self):
            raise ValueError(
                f"cannot split task {self.name!r} of {len(self)} examples with test_fraction={test_fraction}: "
                "one side would be empty"
            )
        test_idx, train_idx = sorted(order[:n_test]), sorted(order[n_test:])
        info = {"split_seed": seed, "test_fraction": test_fraction}
        return (self._select(train_idx, split="train", **info), self._select(test_idx, split="test", **info))

    # ---- batching ------------------------------------------------------------------------------------------
    def batch(self, indices: Sequence[int] | None = None) -> Batch:
        """One left-padded :class:`Batch` of the examples at ``indices`` (all examples if None)."""
        idx = list(range(len(self))) if indices is None else list(indices)
        if not idx:
            raise ValueError("cannot build an empty batch")
        width = max(len(self.clean_ids[i]) for i in idx)
        clean = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        corrupted = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            length = len(self.clean_ids[i])
            clean[row, width - length:] = torch.tensor(self.clean_ids[i], dtype=torch.long)
            corrupted[row, width - length:] = torch.tensor(self.corrupted_ids[i], dtype=torch.long)
            mask[row, width - length:] = 1
        return Batch(
            clean=clean,
            corrupted=corrupted,
            attention_mask=mask,
            answers=_pad_sets([self.answers[i] for i in idx]),
            wrong=_pad_sets([self.wrong[i] for i in idx]),
            answer_pos=torch.full((len(idx),), width - 1, dtype=torch.long),
        )

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Consecutive batches of ``batch_size`` examples in dataset order (the last may be smaller)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.batch(range(start, min(start + batch_size, len(self))))


# --------------------------------------------------------------------------------------------------------------
# Tokenizer helpers
# --------------------------------------------------------------------------------------------------------------


def as_batches(data: "Task | Iterable[Batch]", batch_size: int) -> list[Batch]:
    """A task cut into batches of ``batch_size`` (or the given batches as a list); empty data is an error."""
    if isinstance(data, Task):
        if len(data) == 0:
            raise ValueError("the dataset is empty: the task has no examples")
        return list(data.batches(batch_size))
    out = list(data)
    if not out or sum(len(b) for b in out) == 0:
        raise ValueError("the dataset is empty: no batches were given")
    return out


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

