"""Metrics on hand-made logits with hand-computed expected values."""

from __future__ import annotations

import math

import pytest
import torch

from circuits.metrics import (
    METRICS,
    accuracy,
    answer_logprob,
    check_metric_output,
    get_metric,
    is_higher_better,
    kl_div,
    logit_diff,
    nll,
    prob_diff,
)
from circuits.tasks.base import Batch

P = [0.1, 0.2, 0.3, 0.4]  # example 0's next-token distribution (logits = log P, so softmax = P exactly)
Q = [0.4, 0.3, 0.2, 0.1]  # example 1's


def make_batch(answers, wrong, answer_pos=(2, 1), seq_len=3):
    b = len(answers)
    ids = torch.zeros((b, seq_len), dtype=torch.long)
    return Batch(clean=ids, corrupted=ids.clone(), attention_mask=torch.ones_like(ids),
                 answers=torch.tensor(answers), wrong=torch.tensor(wrong),
                 answer_pos=torch.tensor(answer_pos))


def make_logits():
    """[2, 3, 4]: example 0 scored at position 2 (log P), example 1 at position 1 (log Q); NaN elsewhere,
    which must never leak into a metric."""
    x = torch.full((2, 3, 4), float("nan"))
    x[0, 2] = torch.tensor(P).log()
    x[1, 1] = torch.tensor(Q).log()
    return x


def test_logit_diff_hand_values_with_padding():
    # raw logits this time, to check mean-minus-mean exactly
    x = torch.zeros((2, 3, 4))
    x[0, 2] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    x[1, 1] = torch.tensor([5.0, -1.0, 0.5, 2.0])
    batch = make_batch(answers=[[0, -1], [0, 3]], wrong=[[1, 2], [1, -1]])
    # ex0: 1 - (2 + 3) / 2 = -1.5 ; ex1: (5 + 2) / 2 - (-1) = 4.5
    torch.testing.assert_close(logit_diff(x, batch), torch.tensor([-1.5, 4.5]))


def test_prob_diff_hand_values():
    batch = make_batch(answers=[[3, 2], [0, -1]], wrong=[[0, 1], [1, 2]])
    # ex0: (0.4 + 0.3) - (0.1 + 0.2) = 0.4 ; ex1: 0.4 - (0.3 + 0.2) = -0.1
    torch.testing.assert_close(prob_diff(make_logits(), batch), torch.tensor([0.4, -0.1]))


def test_prob_diff_greater_than_sets():
    # Greater-than style: the answer set is "years > YY", the wrong set "years <= YY", over 4 "years" 0..3, YY=1.
    x = torch.zeros((1, 1, 4))
    x[0, 0] = torch.tensor(P).log()
    batch = make_batch(answers=[[2, 3]], wrong=[[0, 1]], answer_pos=(0,), seq_len=1)
    torch.testing.assert_close(prob_diff(x, batch), torch.tensor([0.7 - 0.3]))


def test_answer_logprob_and_nll():
    batch = make_batch(answers=[[2, 3], [1, -1]], wrong=[[0, -1], [0, -1]])
    expected = torch.tensor([math.log(0.7), math.log(0.3)])
    torch.testing.assert_close(answer_logprob(make_logits(), batch), expected)
    torch.testing.assert_close(nll(make_logits(), batch), -expected)


def test_kl_div_hand_value_and_zero_on_identical():
    batch = make_batch(answers=[[0], [0]], wrong=[[1], [1]])
    clean = make_logits()
    patched = torch.zeros((2, 3, 4))  # uniform: 0.25 everywhere
    expected = torch.tensor([
        sum(p * math.log(p / 0.25) for p in P),
        sum(q * math.log(q / 0.25) for q in Q),
    ])
    torch.testing.assert_close(kl_div(patched, batch, clean_logits=clean), expected)
    torch.testing.assert_close(kl_div(clean, batch, clean_logits=clean), torch.zeros(2))
    # clean logits may also be given already selected at the answer positions: [B, V]
    torch.testing.assert_close(kl_div(patched, batch, clean_logits=clean[[0, 1], [2, 1]]), expected)


def test_kl_div_needs_clean_logits():
    batch = make_batch(answers=[[0], [0]], wrong=[[1], [1]])
    with pytest.raises(ValueError, match="clean_logits"):
        kl_div(make_logits(), batch)


def test_accuracy_with_padding():
    batch = make_batch(answers=[[3, -1], [3, 2]], wrong=[[0, 1], [0, -1]])
    # ex0: 0.4 beats max(0.1, 0.2) -> 1 ; ex1: max(0.1, 0.2) = 0.2 < 0.4 -> 0
    torch.testing.assert_close(accuracy(make_logits(), batch), torch.tensor([1.0, 0.0]))


def test_shape_dtype_and_gradient():
    batch = make_batch(answers=[[3, -1], [0, 2]], wrong=[[0, 1], [1, -1]])
    x = torch.randn(2, 3, 4).to(torch.bfloat16).requires_grad_(True)
    for name, fn in METRICS.items():
        out = fn(x, batch, clean_logits=x.detach() + 1.0)
        assert out.shape == (2,) and out.dtype == torch.float32, name
        check_metric_output(out, 2)
    logit_diff(x, batch).sum().backward()
    grad = x.grad.float()
    assert grad[0, 2].abs().sum() > 0 and grad[1, 1].abs().sum() > 0
    mask = torch.ones_like(grad, dtype=torch.bool)
    mask[0, 2] = mask[1, 1] = False
    assert grad[mask].abs().sum() == 0  # only the answer positions receive gradient


def test_higher_is_better_flags():
    assert {n: f.higher_is_better for n, f in METRICS.items()} == {
        "logit_diff": True, "prob_diff": True, "answer_logprob": True, "accuracy": True, "top1": True,
        "kl_div": False, "nll": False,
    }
    assert is_higher_better("nll") is False


def test_get_metric():
    assert get_metric("prob_diff") is prob_diff

    def mine(logits, batch, clean_logits=None):
        return logits[:, -1, 0].float()

    assert get_metric(mine) is mine
    with pytest.raises(ValueError, match="valid names: accuracy, answer_logprob, kl_div, logit_diff, nll, prob_diff"):
        get_metric("logit_difference")


def test_check_metric_output():
    good = torch.tensor([1.0, 2.0])
    assert check_metric_output(good, 2) is good
    with pytest.raises(ValueError, match=r"shape \[2\].*got shape \[\].*scalar"):
        check_metric_output(torch.tensor(1.0), 2)
    with pytest.raises(ValueError, match=r"got shape \[2, 1\]"):
        check_metric_output(torch.zeros(2, 1), 2)
    with pytest.raises(ValueError, match="floating-point"):
        check_metric_output(torch.tensor([1, 2]), 2)
    with pytest.raises(ValueError, match=r"NaN or inf for 2 example\(s\) \(indices 0, 2\)"):
        check_metric_output(torch.tensor([float("nan"), 0.0, float("inf")]), 3)
    with pytest.raises(ValueError, match="torch.Tensor"):
        check_metric_output([1.0, 2.0], 2)


def test_top1_is_the_greedy_prediction_over_the_vocabulary():
    """accuracy compares answers with the listed wrong answers only; top1 with every token."""
    from circuits.metrics import accuracy, top1

    logits = torch.zeros(2, 1, 6)
    logits[0, 0, 1] = 2.0  # answer 1 is the argmax
    logits[1, 0, 1], logits[1, 0, 2], logits[1, 0, 5] = 2.0, 1.0, 3.0  # answer beats wrong, token 5 beats both
    batch = Batch(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long),
                  torch.tensor([[1, -1], [1, -1]]), torch.tensor([[2], [2]]), torch.zeros(2, dtype=torch.long))
    assert accuracy(logits, batch).tolist() == [1.0, 1.0]
    assert top1(logits, batch).tolist() == [1.0, 0.0]


def test_answer_columns_and_on_columns():
    """Metrics that declare ``answer_columns_only`` give the same values on the logits cut to the answer and
    wrong ids (ids remapped, -1 padding kept); any metric without it means the whole vocabulary."""
    from circuits.metrics import METRICS, accuracy, answer_columns, on_columns

    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    batch = make_batch(answers=[[3, -1], [0, 2]], wrong=[[0, 1], [3, -1]])
    cols = answer_columns([logit_diff, accuracy], batch)
    assert cols.tolist() == [0, 1, 2, 3] and answer_columns([logit_diff, prob_diff], batch) is None
    narrow = make_batch(answers=[[3, -1], [3, -1]], wrong=[[1, -1], [3, 1]])
    cols = answer_columns([logit_diff], narrow)
    assert cols.tolist() == [1, 3]
    cut = on_columns(narrow, cols)
    assert cut.answers.tolist() == [[1, -1], [1, -1]] and cut.wrong.tolist() == [[0, -1], [1, 0]]
    for fn in (logit_diff, accuracy):
        torch.testing.assert_close(fn(x[..., cols], cut), fn(x, narrow))
    assert narrow.answers.tolist() == [[3, -1], [3, -1]]  # the batch itself is unchanged
    flagged = [name for name, fn in METRICS.items() if getattr(fn, "answer_columns_only", False)]
    assert flagged == ["logit_diff", "accuracy"]  # the others read the whole vocabulary (softmax, argmax)
