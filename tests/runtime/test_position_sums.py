"""circuits/runtime/position_sums.py: both ways of summing a position-major buffer equal the definition."""

import pytest
import torch

from circuits.runtime import position_sums as ps


@pytest.mark.parametrize("share", [0.02, 0.2, 0.9])
def test_position_sums_equal_the_definition(share, monkeypatch):
    """``x[k*Q + q, r] = Σ_j coef[k, r, j] buf[k, q, j]`` by the matmul and by row sums (forced either way),
    with receivers that have no nonzero coefficient (empty bags) and masks of different densities."""
    g = torch.Generator().manual_seed(0)
    K, Q, J, d, R, n = 3, 5, 9, 4, 6, 7
    buf = torch.randn(K, Q, J, d, generator=g)
    coef = torch.randn(K, R, n, generator=g) * (torch.rand(K, R, n, generator=g) < share)
    coef[1, 2] = 0  # a receiver with nothing to sum
    want = torch.einsum("krj,kqjd->kqrd", coef, buf[:, :, :n]).reshape(K * Q, R, d)
    for forced in (0.0, 1.0):  # 0: every sum by matmul; 1: every sum by rows
        monkeypatch.setattr(ps, "SPARSE_SHARE", forced)
        got = ps.position_sums(buf, coef)
        assert got.shape == (K * Q, R, d)
        assert (got - want).abs().max() <= 1e-5
