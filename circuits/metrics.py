"""Per-example task metrics shared by discovery (attribution, ACDC) and evaluation (faithfulness).

Contract: a metric is a plain callable ``metric(logits, batch, clean_logits=None) -> Tensor[B]``.

* ``logits`` is ``[B, P, V]`` (any float dtype; computed in float32); only ``logits[b, batch.answer_pos[b]]``
  is used.
* ``batch`` is a :class:`circuits.tasks.Batch` (any object with these fields): ``answers`` ``[B, A]`` and ``wrong`` ``[B, W]`` hold token
  ids padded with -1 (padding is ignored).
* ``clean_logits`` (only needed by :func:`kl_div`) is the clean run's ``[B, P, V]`` logits, or already the
  ``[B, V]`` logits at the answer positions.
* The result has shape ``[B]``, one differentiable value per example. Each built-in metric carries
  ``higher_is_better``: True for ``logit_diff``, ``prob_diff``, ``answer_logprob``, ``accuracy``; False for
  ``kl_div`` and ``nll``. A loss for gradient-based methods is ``-metric`` when higher is better.
* ``answer_columns_only`` (``logit_diff``, ``accuracy``): the metric reads only the answer and wrong-answer
  tokens' logits, so masked evaluation computes those columns alone (:func:`answer_columns`); a user
  callable may set it too.

See docs/metrics.md for the formulas.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Literal, Protocol

import torch


class Answers(Protocol):
    """What a metric reads of a batch (a :class:`circuits.tasks.Batch` is one): answer sets and positions."""

    answers: torch.Tensor  # [B, A] long, padded with -1
    wrong: torch.Tensor  # [B, W] long, padded with -1
    answer_pos: torch.Tensor  # [B] long


MetricName = Literal["logit_diff", "prob_diff", "kl_div", "answer_logprob", "nll", "accuracy", "top1"]
"""Built-in metrics: ``logit_diff`` (best answer logit minus best wrong logit), ``prob_diff``
(probability mass of answers minus wrong answers), ``kl_div`` (KL(clean || run) at the answer position,
lower is better), ``answer_logprob`` (log-probability of the answers), ``nll`` (its negative, lower is
better), ``accuracy`` (best answer beats best wrong answer; not differentiable), ``top1`` (the greedy prediction over the
whole vocabulary is an answer; not differentiable). Formulas: docs/metrics.md."""

__all__ = [
    "Answers",
    "Metric",
    "MetricName",
    "METRICS",
    "logit_diff",
    "prob_diff",
    "kl_div",
    "answer_logprob",
    "nll",
    "accuracy",
    "top1",
    "get_metric",
    "metric_name",
    "is_higher_better",
    "check_metric_output",
    "answer_position_logits",
    "answer_columns",
    "on_columns",
]


class Metric(Protocol):
    """Signature of a metric: per-example values ``[B]`` from ``[B, P, V]`` logits."""

    higher_is_better: bool

    def __call__(self, logits: torch.Tensor, batch: Answers, clean_logits: torch.Tensor | None = None
                 ) -> torch.Tensor: ...


def _metric(higher_is_better: bool, answer_columns_only: bool = False) -> Callable[[Callable], Callable]:
    """Decorator recording the metric's sign convention on the function, and whether it reads only the
    logits of the answer and wrong-answer tokens (then evaluation may compute only those columns)."""

    def mark(fn: Callable) -> Callable:
        fn.higher_is_better = higher_is_better  # type: ignore[attr-defined]
        fn.answer_columns_only = answer_columns_only  # type: ignore[attr-defined]
        return fn

    return mark


def answer_columns(metrics: Iterable[Callable], batch: Answers) -> torch.Tensor | None:
    """The vocabulary columns ``[C]`` (sorted token ids) that ``metrics`` read on ``batch`` when every one of
    them declares ``answer_columns_only`` (the batch's answer and wrong-answer ids), else None: the logits
    those metrics see can then be computed for these columns alone (the unembedding is the largest matmul
    of an answer-position readout)."""
    if not all(getattr(fn, "answer_columns_only", False) for fn in metrics):
        return None
    ids = torch.cat([batch.answers.flatten(), batch.wrong.flatten()])
    ids = ids[ids >= 0].unique()
    return ids if len(ids) else None


def on_columns(batch: Answers, columns: torch.Tensor) -> Answers:
    """``batch`` as a metric sees it on logits cut to ``columns`` (from :func:`answer_columns`): answer and
    wrong-answer ids become indices into ``columns`` (padding stays -1)."""
    cols = columns.to(batch.answers.device)

    def index(ids: torch.Tensor) -> torch.Tensor:
        return torch.where(ids >= 0, torch.searchsorted(cols, ids.clamp(min=0)), ids)

    out = copy.copy(batch)
    out.answers, out.wrong = index(batch.answers), index(batch.wrong)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def answer_position_logits(logits: torch.Tensor, batch: Answers) -> torch.Tensor:
    """``[B, V]`` float32 logits at each example's ``answer_pos`` (a ``[B, V]`` input is returned as float32)."""
    if logits.dim() == 2:
        return logits.float()
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, P, V] (or [B, V]), got shape {tuple(logits.shape)}")
    b = logits.shape[0]
    if b != batch.answer_pos.shape[0]:
        raise ValueError(f"logits have batch size {b} but the batch has {batch.answer_pos.shape[0]} examples")
    rows = torch.arange(b, device=logits.device)
    return logits[rows, batch.answer_pos.to(logits.device)].float()


def _gather(values: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``values[b, ids[b, k]]`` for a ``[B, K]`` id tensor padded with -1; returns (gathered, valid mask)."""
    ids = ids.to(values.device)
    valid = ids >= 0
    return values.gather(1, ids.clamp(min=0)), valid


def _masked_sum(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~valid, 0.0).sum(-1)


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return _masked_sum(x, valid) / valid.sum(-1).clamp(min=1).to(x.dtype)


def _masked_logsumexp(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~valid, float("-inf")).logsumexp(-1)


def _masked_max(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~valid, float("-inf")).max(-1).values


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------


@_metric(higher_is_better=True, answer_columns_only=True)
def logit_diff(logits: torch.Tensor, batch: Answers, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Mean logit over the answer set minus mean logit over the wrong set, per example."""
    x = answer_position_logits(logits, batch)
    ans, a_ok = _gather(x, batch.answers)
    wrg, w_ok = _gather(x, batch.wrong)
    return _masked_mean(ans, a_ok) - _masked_mean(wrg, w_ok)


@_metric(higher_is_better=True)
def prob_diff(logits: torch.Tensor, batch: Answers, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Total softmax probability of the answer set minus that of the wrong set (greater-than: years > YY
    minus years <= YY)."""
    probs = torch.softmax(answer_position_logits(logits, batch), dim=-1)
    ans, a_ok = _gather(probs, batch.answers)
    wrg, w_ok = _gather(probs, batch.wrong)
    return _masked_sum(ans, a_ok) - _masked_sum(wrg, w_ok)


@_metric(higher_is_better=False)
def kl_div(logits: torch.Tensor, batch: Answers, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
    """KL(clean || patched) of the next-token distributions at the answer position (nats)."""
    if clean_logits is None:
        raise ValueError("kl_div needs clean_logits (the clean run's logits) to compare against; got None")
    patched = torch.log_softmax(answer_position_logits(logits, batch), dim=-1)
    clean = torch.log_softmax(answer_position_logits(clean_logits.to(logits.device), batch), dim=-1)
    return (clean.exp() * (clean - patched)).sum(-1)


@_metric(higher_is_better=True)
def answer_logprob(logits: torch.Tensor, batch: Answers, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
    """log of the total probability of the answer set: logsumexp of log_softmax over the answers."""
    logp = torch.log_softmax(answer_position_logits(logits, batch), dim=-1)
    ans, a_ok = _gather(logp, batch.answers)
    return _masked_logsumexp(ans, a_ok)


@_metric(higher_is_better=False)
def nll(logits: torch.Tensor, batch: Answers, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood of the answer set: ``-answer_logprob``."""
    return -answer_logprob(logits, batch, clean_logits)


@_metric(higher_is_better=True, answer_columns_only=True)
def accuracy(logits: torch.Tensor, batch: Answers, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
    """1.0 where the best answer logit beats the best wrong logit, else 0.0 (not differentiable)."""
    x = answer_position_logits(logits, batch)
    ans, a_ok = _gather(x, batch.answers)
    wrg, w_ok = _gather(x, batch.wrong)
    return (_masked_max(ans, a_ok) > _masked_max(wrg, w_ok)).float()


@_metric(higher_is_better=True)
def top1(logits: torch.Tensor, batch: Answers, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
    """1.0 where the highest logit over the whole vocabulary is an answer token, else 0.0 (not differentiable).

    Unlike :func:`accuracy`, which compares answers with the listed wrong answers only, this is the
    model's real greedy prediction."""
    x = answer_position_logits(logits, batch)
    pred = x.argmax(-1, keepdim=True)  # [B, 1]
    return ((batch.answers == pred) & (batch.answers >= 0)).any(-1).float()


METRICS: dict[str, Callable] = {
    "logit_diff": logit_diff,
    "prob_diff": prob_diff,
    "kl_div": kl_div,
    "answer_logprob": answer_logprob,
    "nll": nll,
    "accuracy": accuracy,
    "top1": top1,
}
"""Built-in metrics by name."""


def get_metric(name_or_callable: str | Callable) -> Callable:
    """Return the metric callable for a registered name, or the callable itself.

    Raises ``ValueError`` listing the valid names for an unknown name.
    """
    if callable(name_or_callable):
        return name_or_callable
    if isinstance(name_or_callable, str) and name_or_callable in METRICS:
        return METRICS[name_or_callable]
    raise ValueError(f"unknown metric {name_or_callable!r}; valid names: {', '.join(sorted(METRICS))} "
                     "(or pass a callable metric(logits, batch, clean_logits=None) -> Tensor[B])")


def metric_name(metric: str | Callable) -> str:
    """The name a metric is recorded under: its registry name, or a callable's ``__name__`` (else ``custom``)."""
    return metric if isinstance(metric, str) else str(getattr(metric, "__name__", "custom"))


def is_higher_better(metric: str | Callable, default: bool = True) -> bool:
    """The metric's ``higher_is_better`` flag (``default`` for a user callable without one)."""
    return bool(getattr(get_metric(metric), "higher_is_better", default))


def check_metric_output(value: object, batch_size: int) -> torch.Tensor:
    """Validate a metric's return value: a floating tensor of shape ``[batch_size]`` with finite entries.

    Returns the value unchanged; raises ``ValueError`` describing the problem otherwise.
    """
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"metric must return a torch.Tensor of shape [{batch_size}] (one value per example), "
                         f"got {type(value).__name__}")
    if tuple(value.shape) != (batch_size,):
        hint = (" It returned a scalar: return per-example values (do not average over the batch)."
                if value.dim() == 0 else "")
        raise ValueError(f"metric must return shape [{batch_size}] (one value per example in the batch), "
                         f"got shape {list(value.shape)}.{hint}")
    if not value.is_floating_point():
        raise ValueError(f"metric must return a floating-point tensor, got dtype {value.dtype}")
    bad = ~torch.isfinite(value.detach())
    if bool(bad.any()):
        where = bad.nonzero().flatten().tolist()
        shown = ", ".join(map(str, where[:10])) + (" ..." if len(where) > 10 else "")
        raise ValueError(f"metric returned NaN or inf for {len(where)} example(s) (indices {shown})")
    return value
