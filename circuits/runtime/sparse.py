"""Sparse masked forward: compute only the nodes a binary keep-mask changes.

Under corrupted-run patching ("patching" ablation) a removed edge reads the corrupted run's
sender output. Because the residual stream is a sum of sender outputs plus input-independent
constants (``b_O``, nothing else), receiver ``r``'s input under keep-mask ``k`` is

    x_r^k = x_r^corr + Σ_s keep(s, r) · Δ_s^k,        Δ_s^k = z_s^k − z_s^corr

(the general path's ``resid − Σ_s (1 − keep) Δ_s`` rewritten around the corrupted run's
residual ``x_r^corr``; the constants cancel because both runs add the same ones). Per mask,
every node is BASE, CORRUPTED or CHANGED relative to the base and the corrupted run
(:mod:`circuits.runtime.node_states`).

BASE and CORRUPTED nodes take their outputs from the two recorded runs (``Δ = z^base − z^corr``
or 0); only CHANGED nodes are computed (:func:`sparse_logits`), batched over the masks that
change them: a CHANGED head recomputes the projections of its CHANGED q/k/v receivers only
(the others come from the recorded runs' q/k/v), then attention and ``W_O``; a CHANGED MLP runs
on its assembled input; CHANGED logits are read at the answer positions only.

**The base run.** It is the clean run (every edge kept) unless the runs are *rebased* on a circuit
``b`` (:meth:`SparseBase.rebase`): then BASE means "equals ``b``'s masked run". Masks that differ
from ``b`` in a few edges (exact effects against a circuit, refinement) then compute only the nodes
downstream of those edges that the circuit reads.

This holds only where the residual is that sum: adapters opt in by declaring
``additive_residual = True`` on their own class (:func:`supports_sparse`), so a new family
(including a subclass of an opted-in one) uses the general path until it declares it.

Shapes: K masks, B examples, P positions, d model width, S senders, R receivers, H query
heads, dh head width, N = CHANGED (mask, sender) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..graph import GraphLayout
from ..models.base import Adapter
from . import position_sums as sums
from .block import Block, PlainIO, Rotary
from .masks import causal_mask, default_position_ids
from .node_states import BASE, CHANGED, CORRUPTED, BaseMask, StatePlan, plan_states
from .workspace import Workspace


@dataclass
class SparseStats:
    """Counters of the sparse path (a regression to "compute everything" shows here).

    ``masks``: masks evaluated; ``heads`` / ``mlps`` / ``logits``: (mask, node) pairs computed (``at_answer``
    of the heads and MLPs at the answer positions only);
    ``total_heads`` / ``total_mlps``: what a dense masked forward of the same masks computes.
    """

    masks: int = 0
    heads: int = 0
    mlps: int = 0
    logits: int = 0
    at_answer: int = 0  # of the heads and MLPs, those computed at the answer positions only
    total_heads: int = 0
    total_mlps: int = 0

    def computed_share(self) -> float:
        """Share of the heads and MLPs a dense forward computes that the sparse path computed."""
        total = self.total_heads + self.total_mlps
        return (self.heads + self.mlps) / total if total else 0.0


@dataclass(frozen=True)
class SparseBase:
    """One batch's base (clean, unless rebased) and corrupted runs, as the sparse forward reads them.

    ``z_corr``: ``[S, B, P, d]`` corrupted sender outputs; ``delta``: ``z^base − z^corr``, position-major
    ``[B, P, S, d]`` (a receiver input is a per-position matmul over it: see :meth:`_Run.inputs`);
    ``resid_corr``: the corrupted residual entering every layer, then the final one (``[B, P, d]``);
    ``qkv``: per layer, the base and the corrupted run's q, k, v (``[B, H, P, dh]``, rotary applied);
    ``at``: ``[B]`` answer positions; ``base_logits`` / ``corrupted_logits``: ``[B, 1, V]`` there;
    ``around``: the circuit the base run is of (None: the clean run, every edge kept).
    """

    z_corr: torch.Tensor
    delta: torch.Tensor
    resid_corr: list[torch.Tensor]
    qkv: list[tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]
    mask: torch.Tensor  # [B, 1, P, P] bool
    rot: Rotary
    at: torch.Tensor
    base_logits: torch.Tensor
    corrupted_logits: torch.Tensor
    delta_at: torch.Tensor = field(repr=False)  # [B, S, d]: delta at the answer positions
    final_at: torch.Tensor = field(repr=False)  # [B, d]: the corrupted final residual there
    around: BaseMask | None = None

    @classmethod
    def from_runs(cls, blocks: list[Block], attention_mask: torch.Tensor | None, answer_pos: torch.Tensor,
                  clean, corrupted) -> SparseBase:
        """From the clean and corrupted :class:`~circuits.runtime.traced.RunOutput` (both run with
        ``record=True, record_resid=True, logit_positions=answer_pos``)."""
        zc, zx = clean.senders, corrupted.senders
        B, P = zc.shape[1:3]
        dev = zc.device
        adapter = blocks[0].adapter
        rot = adapter.rotary(clean.resid[0], default_position_ids(attention_mask, B, P, dev))
        qkv = [(layer_qkv(blk, clean.resid[i], rot), layer_qkv(blk, corrupted.resid[i], rot))
               for i, blk in enumerate(blocks)]
        at = answer_pos.to(dev).long()
        rows = torch.arange(B, device=dev)
        delta = zc.new_empty(B, P, *zc.shape[::3])  # [B, P, S, d], written in one pass
        torch.sub(zc.permute(1, 2, 0, 3), zx.permute(1, 2, 0, 3), out=delta)
        return cls(zx, delta, corrupted.resid, qkv, causal_mask(attention_mask, B, P, dev), rot, at,
                   clean.logits, corrupted.logits, delta[rows, at], corrupted.resid[-1][rows, at])

    def at_answer(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` at each example's answer position: ``[..., B, P, d]`` -> ``[..., B, d]``."""
        return t[..., torch.arange(len(self.at), device=self.at.device), self.at, :]

    def rows_at_answer(self, t: torch.Tensor) -> torch.Tensor:
        """A position-major ``t`` at each example's answer position: ``[B, P, ...]`` -> ``[B, ...]``."""
        return t[torch.arange(len(self.at), device=self.at.device), self.at]

    def rebase(self, blocks: list[Block], layout: GraphLayout, keep: torch.Tensor) -> SparseBase:
        """The same runs with the binary keep-mask ``keep`` (``[E]``)'s run as the base: masks that differ
        from ``keep`` in a few edges then compute only what those edges change. Costs one sparse forward
        of ``keep`` that computes every node it changes (read or not: other masks may read them)."""
        keep = keep.reshape(1, -1).to(self.delta.device, self.delta.dtype)
        plan = plan_states(layout, keep, self.around, compute_all=True)
        run = _Run(layout, self, keep, plan, capture=True)
        logits = run.forward(blocks, SparseStats())
        st = plan.senders[0]
        delta = torch.where((st == BASE)[:, None], self.delta, 0.0)  # CORRUPTED senders: no delta
        changed = (st == CHANGED).nonzero().flatten()
        delta[:, :, changed] = run.store[:, :, run.row[0, changed]]
        around = BaseMask(layout.to_dense(keep[0]) > 0.5, st == CORRUPTED, plan.receivers[0] == CORRUPTED)
        qkv = [(tuple(q), c) for q, c in run.captured]
        return replace(self, delta=delta, qkv=qkv, base_logits=logits, delta_at=self.rows_at_answer(delta),
                       around=around)


def layer_qkv(block: Block, resid: torch.Tensor, rot: Rotary) -> tuple[torch.Tensor, ...]:
    """q, k, v ``[B, H, P, dh]`` (k/v per query head, rotary applied) of an unpatched layer on ``resid``."""
    q, k, v = PlainIO().qkv(block, resid, None)
    if rot is not None:
        q, k = block.adapter.rotate(q, *rot), block.adapter.rotate(k, *rot)
    return q, k, v


def add_weighted(acc: torch.Tensor, A: torch.Tensor, table: torch.Tensor, first: int = 0,
                 inplace: bool = False) -> torch.Tensor:
    """``acc + A @ table[:, first:first+n]`` at every position: ``acc`` ``[Q, c or 1, d]``, ``A`` ``[c, n]``,
    ``table`` ``[Q, J, d]`` (contiguous) -> ``[Q, c, d]`` (``acc`` itself when ``A`` is zero; written into
    ``acc`` when ``inplace`` and it is a full ``[Q, c, d]``). Sparse weights are summed by rows
    (:func:`~circuits.runtime.position_sums.by_rows`); otherwise only the columns of ``A`` with a nonzero take
    part, gathered when they are under half of them."""
    if not bool(A.any()):
        return acc
    if table.is_contiguous() and sums.by_rows(A):  # no gathered copy of the rows read
        x = sums.row_sums(table[None], A[None], first)  # [Q, c, d]
        return acc.add_(x) if inplace and acc.shape == x.shape else x.add_(acc)
    src = table[:, first:first + A.shape[1]]
    cols = A.any(0).nonzero().flatten()
    if 2 * len(cols) < A.shape[1]:
        A, src = A[:, cols], src[:, cols]
    A = A.expand(src.shape[0], *A.shape)
    if inplace and acc.shape[1] == A.shape[1]:
        return acc.baddbmm_(A, src)
    return torch.baddbmm(acc, A, src)


def span(idx: torch.Tensor) -> torch.Tensor | slice:
    """``idx`` (``[n]`` increasing) as a slice when it is a run of consecutive indices: indexing with it is a
    view (or a strided copy) instead of a gather or scatter."""
    if len(idx) and int(idx[-1]) - int(idx[0]) == len(idx) - 1 and bool((idx.diff() == 1).all()):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


class _Run:
    """One sparse masked forward of K masks: the CHANGED deltas and how receivers read them."""

    def __init__(self, layout: GraphLayout, base: SparseBase, keep: torch.Tensor, plan: StatePlan,
                 capture: bool = False, workspace: Workspace | None = None) -> None:
        self.layout, self.base, self.plan = layout, base, plan
        # with one mask, every layer's (q, k, v of that mask's run, corrupted q, k, v): a rebase keeps them
        self.captured: list | None = [] if capture else None
        S, B, P, d = base.z_corr.shape
        self.kd = layout.to_dense(keep.to(base.delta.dtype))  # [K, S, R] 0/1
        self.changed = plan.live  # [K, S]: the CHANGED senders computed (and stored)
        K = self.changed.shape[0]
        pairs = self.changed.nonzero()  # [N, 2] mask-major, senders in order
        self.row = torch.full((K, S), -1, dtype=torch.long, device=keep.device)
        self.row[pairs[:, 0], pairs[:, 1]] = torch.arange(len(pairs), device=keep.device)
        counts = self.changed.sum(1)
        self.offset = (torch.cumsum(counts, 0) - counts).tolist()  # first store row of each mask
        # the CHANGED senders' deltas [B, P, N, d] (position-major like base.delta; N mask-major): at most
        # K x S, like the general path's buffer (from the workspace of a loop over masks: its pages are not
        # faulted in afresh every call)
        shape = (B, P, len(pairs), d)
        self.store = (base.delta.new_empty(shape) if workspace is None
                      else workspace.empty("sparse store", shape, base.delta.dtype, base.delta.device))
        self.full = plan.full
        # rows computed at the answer positions only: zero elsewhere, so that a zero coefficient times
        # them stays zero in the every-position matmuls (they are never read there)
        self.store[:, :, self.row[plan.live & ~plan.full]] = 0.0

    def forward(self, blocks: list[Block], stats: SparseStats, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Every layer's CHANGED heads and MLP, then the answer-position logits ``[K * B, 1, V]`` (or ``C``
        ``columns``)."""
        with torch.no_grad():
            for block in blocks:
                self.heads(block, stats)
                self.mlp(block, stats)
            return self.logits(blocks[0].adapter, stats, columns)

    def inputs(self, ks: torch.Tensor, rs: torch.Tensor, n: int, base: torch.Tensor, delta: torch.Tensor,
               store: torch.Tensor) -> torch.Tensor:
        """Inputs of receivers ``rs[i]`` under masks ``ks[i]`` (``ks`` sorted) reading senders ``0..n-1``:
        ``base + Σ_s keep Δ_s`` -> ``[M, *base.shape]`` (a view of position-major ``[*base.shape[:-1], M, d]``).

        ``base``: the corrupted run's input there (``[..., d]``); ``delta`` ``[..., S, d]`` and ``store``
        ``[..., N, d]``: the BASE senders' and the CHANGED senders' deltas, position-major. Each position is
        one small matmul whose deltas stay in cache: faster on the CPU than one sender-major
        ``[M, n] x [n, positions * d]`` product, whose few output rows make it memory-bound.
        """
        d = base.shape[-1]
        flat = base.reshape(-1, 1, d)  # [Q, 1, d]: Q positions
        Q = flat.shape[0]
        D, Z = delta.reshape(Q, -1, d), store.reshape(Q, -1, d)
        parts = []
        masks, counts = torch.unique_consecutive(ks, return_counts=True)
        a = 0
        for k, c in zip(masks.tolist(), counts.tolist()):  # masks, not edges
            coef = self.kd[k, :n][:, rs[a:a + c]].t()  # [c, n]
            a += c
            o = add_weighted(flat, coef * (self.plan.senders[k, :n] == BASE), D)
            chg = self.changed[k, :n].nonzero().flatten()  # their deltas: this mask's first store rows
            o = add_weighted(o, coef[:, chg], Z, self.offset[k], inplace=o is not flat)
            parts.append(o.expand(Q, c, d))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, 1)  # [Q, M, d]
        return out.permute(1, 0, 2).unflatten(1, base.shape[:-1])

    def heads(self, block: Block, stats: SparseStats) -> None:
        """Compute layer ``block.layer``'s CHANGED (mask, head) pairs and store their deltas: the pairs whose
        output is read at every position, then those read at the answer positions only."""
        lay, b, layer = self.layout, self.base, block.layer
        s0, _ = lay.head_senders(layer)
        r0, r1 = lay.attn_receivers(layer)
        H = lay.n_heads
        if self.captured is not None:  # the mask's q, k, v of every head, the computed ones filled in below
            based, corr = b.qkv[layer]
            rs = self.plan.receivers[0, r0:r1].view(H, 3)
            self.captured.append(([torch.where((rs[:, c] == CORRUPTED)[None, :, None, None], corr[c], based[c])
                                   for c in range(3)], corr))
        for at_only in (False, True):
            pairs = (self.changed[:, s0:s0 + H] & (self.full[:, s0:s0 + H] != at_only)).nonzero()  # (mask, head)
            if len(pairs):
                self.head_group(block, pairs[:, 0], pairs[:, 1], at_only)
                stats.heads += len(pairs)
                stats.at_answer += len(pairs) if at_only else 0

    def head_group(self, block: Block, pk: torch.Tensor, ph: torch.Tensor, at_only: bool) -> None:
        """Heads ``ph[i]`` under masks ``pk[i]`` (mask-major): their CHANGED q/k/v receivers projected from
        assembled inputs, the others from the recorded runs; attention, ``W_O``, deltas stored. With
        ``at_only`` the queries and outputs are computed at the answer positions only (keys and values
        at every position)."""
        lay, b, a, layer = self.layout, self.base, block.adapter, block.layer
        s0, _ = lay.head_senders(layer)
        r0, r1 = lay.attn_receivers(layer)
        K, H = self.changed.shape[0], lay.n_heads
        rows = torch.arange(len(b.at), device=b.at.device)  # with b.at: each example's answer position
        rstate = self.plan.receivers[:, r0:r1].view(K, H, 3)[pk, ph]  # [Nc, 3]
        based, corr = b.qkv[layer]
        hs = span(ph)  # all heads, or a run of them (near-dense masks): views, not gathers
        qkv = [torch.where((rstate[:, c] == CORRUPTED)[None, :, None, None], corr[c][:, hs], based[c][:, hs])
               for c in range(3)]  # [B, Nc, P, dh] each
        if at_only:
            qkv[0] = qkv[0][rows, :, b.at][:, :, None]  # [B, Nc, 1, dh]
        n = lay.senders_before_attn(layer)
        changed = rstate == CHANGED  # [Nc, 3]
        slots = ((0,), (1, 2)) if at_only else ((0, 1, 2),)
        for group in slots:  # receivers read at the same positions: one assembly, one projection
            at_q = at_only and group == (0,)
            in_group = torch.tensor([slot in group for slot in range(3)], device=pk.device)
            i, c = (changed & in_group).nonzero().unbind(1)
            if not len(i):
                continue
            if at_q:
                x = self.inputs(pk[i], r0 + 3 * ph[i] + c, n, b.at_answer(b.resid_corr[layer]), b.delta_at,
                                b.rows_at_answer(self.store))[:, :, None]  # [M, B, 1, d]
            else:
                x = self.inputs(pk[i], r0 + 3 * ph[i] + c, n, b.resid_corr[layer], b.delta, self.store)  # [M, B, P, d]
            y = block.project_rows(x, ph[i], c).transpose(0, 1)  # [B, M, P or 1, dh]
            if b.rot is not None:  # queries and keys are rotated, values are not
                rot = [Block.rows_at(t, b.at) for t in b.rot] if at_q else b.rot
                y = torch.where((c == 2)[None, :, None, None], y, a.rotate(y, *rot))
            for slot in group:
                sel = c == slot
                qkv[slot][:, i[sel]] = y[:, sel]
        if self.captured is not None:
            for c in range(3):
                self.captured[-1][0][c][:, ph] = qkv[c]
        W_O = a.attn_weights(layer).W_O[hs]
        store_rows, zc = span(self.row[pk, s0 + ph]), b.z_corr[span(s0 + ph)]
        if at_only:
            mask = b.mask[rows, :, b.at][:, :, None]  # [B, 1, 1, P]
            ctx = a.attend(layer, *qkv, mask, q_pos=b.at[:, None])  # [B, Nc, 1, dh]
            out = torch.einsum("bne,ned->nbd", ctx[:, :, 0], W_O)
            out = out - b.at_answer(zc)  # [Nc, B, d]
            self._store_at(store_rows, out)
        else:
            ctx = a.attend(layer, *qkv, b.mask)  # [B, Nc, P, dh]
            out = torch.einsum("bnpe,ned->bpnd", ctx, W_O)  # [B, P, Nc, d]
            if isinstance(store_rows, slice):  # one pass into the store's strided rows, no temporary
                torch.sub(out, zc.permute(1, 2, 0, 3), out=self.store[:, :, store_rows])
            else:
                self.store[:, :, store_rows] = out - zc.permute(1, 2, 0, 3)

    def _store_at(self, rows: torch.Tensor | slice, out: torch.Tensor) -> None:
        """Store ``out`` ``[n, B, d]`` (deltas at the answer positions) in store rows ``rows`` there."""
        b = self.base
        ex = torch.arange(len(b.at), device=b.at.device)
        if isinstance(rows, slice):
            self.store[ex, b.at, rows] = out.transpose(0, 1)
        else:
            self.store[ex[:, None], b.at[:, None], rows[None]] = out.transpose(0, 1)

    def mlp(self, block: Block, stats: SparseStats) -> None:
        """Compute layer ``block.layer``'s CHANGED MLPs (one per mask that changes it) and store their deltas:
        at every position where some computed receiver reads it there, else at the answer positions."""
        lay, b, layer = self.layout, self.base, block.layer
        s = lay.mlp_sender(layer)
        base = b.resid_corr[layer] if lay.parallel_attn_mlp else b.resid_corr[layer + 1] - b.z_corr[s]
        n = lay.senders_before_mlp(layer)
        for at_only in (False, True):
            ks = (self.changed[:, s] & (self.full[:, s] != at_only)).nonzero().flatten()
            if not len(ks):
                continue
            r = torch.full_like(ks, lay.mlp_receiver(layer))
            if at_only:
                x = self.inputs(ks, r, n, b.at_answer(base), b.delta_at, b.rows_at_answer(self.store))  # [m, B, d]
                out = block.mlp(x[:, :, None])[:, :, 0] - b.at_answer(b.z_corr[s])  # [m, B, d]
                self._store_at(span(self.row[ks, s]), out)
            else:
                x = self.inputs(ks, r, n, base, b.delta, self.store)  # [m, B, P, d]
                self.store[:, :, span(self.row[ks, s])] = (block.mlp(x) - b.z_corr[s]).permute(1, 2, 0, 3)
            stats.mlps += len(ks)
            stats.at_answer += len(ks) if at_only else 0

    def logits(self, adapter: Adapter, stats: SparseStats, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Answer-position logits ``[K * B, 1, V]`` (``[K * B, 1, C]`` with ``columns``): recorded for BASE /
        CORRUPTED masks, else computed."""
        b, state = self.base, self.plan.logits
        K, B = len(state), len(b.at)
        base, corrupted = ((b.base_logits, b.corrupted_logits) if columns is None
                           else (b.base_logits[..., columns], b.corrupted_logits[..., columns]))
        out = base.new_empty(K, *base.shape)
        out[state == BASE] = base
        out[state == CORRUPTED] = corrupted
        ks = (state == CHANGED).nonzero().flatten()
        if len(ks):
            r = torch.full_like(ks, self.layout.logits_receiver)
            x = self.inputs(ks, r, self.layout.n_senders, b.final_at, b.delta_at, b.rows_at_answer(self.store))  # [m, B, d]
            out[ks] = adapter.unembed(x[:, :, None], columns)
            stats.logits += len(ks)
        return out.view(K * B, 1, -1)


def sparse_logits(blocks: list[Block], layout: GraphLayout, base: SparseBase, keep: torch.Tensor,
                  stats: SparseStats | None = None, plan: StatePlan | None = None,
                  workspace: Workspace | None = None, columns: torch.Tensor | None = None) -> torch.Tensor:
    """Answer-position logits ``[K * B, 1, V]`` (mask-major) under binary keep-masks ``[K, E]``, computing
    only the CHANGED nodes; equal to ``TracedModel.run(clean, patch=Patch(keep, z_corr), logit_positions=at)``
    whatever circuit ``base`` was rebased on. ``plan``: the masks' :func:`plan_states` when already known;
    ``workspace``: where the store of computed deltas comes from (a loop's, see :mod:`.workspace`);
    ``columns`` (``[C]`` token ids): only those logits, ``[K * B, 1, C]``.
    """
    keep = keep[None] if keep.dim() == 1 else keep
    stats = SparseStats() if stats is None else stats
    plan = plan_states(layout, keep.to(base.delta.device), base.around) if plan is None else plan
    out = _Run(layout, base, keep.to(base.delta.device), plan, workspace=workspace).forward(blocks, stats, columns)
    stats.masks += keep.shape[0]
    stats.total_heads += keep.shape[0] * layout.n_layers * layout.n_heads
    stats.total_mlps += keep.shape[0] * layout.n_layers
    return out
