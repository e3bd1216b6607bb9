"""Task and Batch: a task's examples in token-id form, and the left-padded tensors cut from them.

A :class:`Task` is a list of (clean prompt, corrupted prompt, answer set, wrong-answer set) examples in token-id
form. Clean and corrupted prompts of one example always have the same number of tokens, so that a patched
run can swap activations position by position. :meth:`Task.batches` turns it into left-padded
:class:`Batch` tensors whose scored position is the last one (``P - 1``). The tokenizer rules every
generator shares are in :mod:`circuits.tasks.build`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..metrics import METRICS

__all__ = ["Batch", "Task", "as_batches", "task_metric", "DATA_DIR"]

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

    def to(self, device: torch.device | str) -> Batch:
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

    def repeat(self, n: int) -> Batch:
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

    def at_answer(self) -> Batch:
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

    def _select(self, indices: Sequence[int], **meta_updates: Any) -> Task:
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

    def subset(self, n: int) -> Task:
        """The first ``n`` examples (``1 <= n <= len(self)``)."""
        if not 1 <= n <= len(self):
            raise ValueError(f"subset size must be between 1 and {len(self)} for task {self.name!r}, got {n}")
        return self._select(range(n))

    def split(self, test_fraction: float = 0.5, seed: int = 0) -> tuple[Task, Task]:
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

    def batches(self, batch_size: int, span: range | None = None) -> Iterator[Batch]:
        """Consecutive batches of ``batch_size`` examples in dataset order (the last may be smaller), of
        the examples in ``span`` (default: all)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        span = range(len(self)) if span is None else span
        for start in range(span.start, span.stop, batch_size):
            yield self.batch(range(start, min(start + batch_size, span.stop)))


# --------------------------------------------------------------------------------------------------------------
# Tokenizer helpers
# --------------------------------------------------------------------------------------------------------------


def task_metric(metric: str | Callable | None, data: Task | Iterable[Batch]) -> str | Callable:
    """The metric to use: ``metric`` if given, else the task's own; plain batches carry none, so they need one."""
    if metric is not None:
        return metric
    if not isinstance(data, Task):
        raise ValueError("pass a metric (name or callable) when data is not a Task")
    return data.metric


def as_batches(data: Task | Iterable[Batch], batch_size: int) -> list[Batch]:
    """A task cut into batches of ``batch_size`` (or the given batches as a list); empty data is an error."""
    if isinstance(data, Task):
        if len(data) == 0:
            raise ValueError("the dataset is empty: the task has no examples")
        return list(data.batches(batch_size))
    out = list(data)
    if not out or sum(len(b) for b in out) == 0:
        raise ValueError("the dataset is empty: no batches were given")
    return out
