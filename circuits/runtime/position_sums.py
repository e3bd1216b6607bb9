"""Weighted sums over a position-major buffer: every receiver's input at every position.

A masked run keeps, at each position, the residual and every sender's delta side by side
(``RunState.buffer``, ``[K, Q, J, d]``: K masks, Q = B*P rows, J slots). A receiver group's inputs are
``Σ_j coef[k, r, j] · buf[k, q, j]``. When most coefficients are nonzero that is one small matmul per
position (the rows of a position stay in cache). When few are, as for a mask that keeps (or removes)
a few percent of the edges, the same sums read only the rows with a weight: ``embedding_bag`` gathers
and adds them in one pass without writing the gathered rows, for about the cost of the matmul times
the share of nonzeros (plus the output's write).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: at or below this share of nonzero coefficients the sums read only the weighted rows (on this CPU the
#: two ways cost the same at ~50 %, the row sums about a third of the matmul at 5 %)
SPARSE_SHARE = 0.3


def by_rows(coef: torch.Tensor) -> bool:
    """Whether sums with the coefficients ``coef`` read only the weighted rows (:func:`row_sums`): at most
    :data:`SPARSE_SHARE` of them are nonzero."""
    return int(coef.count_nonzero()) <= SPARSE_SHARE * coef.numel()


def position_sums(buf: torch.Tensor, coef: torch.Tensor, out: torch.Tensor | None = None, first: int = 0
                  ) -> torch.Tensor:
    """``x[k*Q + q, r] = Σ_j coef[k, r, j] · buf[k, q, first + j]``: ``buf`` ``[K, Q, J, d]`` (contiguous),
    ``coef`` ``[K, R, n]`` over its slots ``first..first+n-1`` -> ``[K*Q, R, d]``: one small matmul per
    position, or :func:`row_sums` where :func:`by_rows`. ``out`` (``[K*Q, R, d]``) is written on the matmul
    path only; the row-sum path returns a new tensor."""
    if by_rows(coef):
        return row_sums(buf, coef, first)
    K, Q, J, d = buf.shape
    n = coef.shape[2]
    c = coef[:, None].expand(K, Q, *coef.shape[1:]).reshape(K * Q, -1, n)
    return torch.bmm(c, buf[:, :, first:first + n].reshape(K * Q, n, d), out=out)


def row_sums(buf: torch.Tensor, coef: torch.Tensor, first: int = 0) -> torch.Tensor:
    """:func:`position_sums` by ``embedding_bag`` over the nonzeros of ``coef``: one bag per (mask, row,
    receiver), holding the buffer rows of that receiver's nonzero slots; no gathered copy is written."""
    K, Q, J, d = buf.shape
    R = coef.shape[1]
    m, r, j = coef.nonzero().unbind(1)  # (mask, receiver, slot) of each nonzero, in row-major order
    weights = coef[m, r, j]
    j = j + first
    per_bag = torch.bincount(m * R + r, minlength=K * R).view(K, R)  # entries of each receiver
    ends = per_bag.sum(1).cumsum(0).tolist()
    q = torch.arange(Q, device=buf.device)[:, None]  # [Q, 1]
    index, w, offsets, done = [], [], [], 0
    for k in range(K):  # masks, not edges
        lo, hi = (ends[k - 1] if k else 0), ends[k]
        e = hi - lo
        index.append(((k * Q + q) * J + j[None, lo:hi]).flatten())  # table rows [Q * e]
        w.append(weights[lo:hi].expand(Q, e).flatten())
        starts = per_bag[k].cumsum(0) - per_bag[k]  # [R]: where each receiver's entries start
        offsets.append((done + q * e + starts[None]).flatten())
        done += Q * e
    x = F.embedding_bag(torch.cat(index), buf.view(-1, d), torch.cat(offsets), mode="sum",
                        per_sample_weights=torch.cat(w))  # [K*Q*R, d]
    return x.view(K * Q, R, d)
