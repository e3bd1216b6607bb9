"""Node states of a binary keep-mask: which nodes a sparse masked forward must compute.

Per mask, every node gets a state (:class:`NodeState`) relative to two recorded runs, the *base* run
(the clean run, or a rebased circuit's: :meth:`~circuits.runtime.sparse.SparseBase.rebase`) and the
corrupted run, propagated in topological order by :func:`plan_states`:

* ``input`` is BASE (the masked run reads the clean ids);
* a receiver is BASE if every incoming edge is kept and comes from a BASE sender (then its input is
  the base run's), CORRUPTED if every incoming edge is removed or comes from a CORRUPTED sender (the
  corrupted run's input), else CHANGED;
* a head is BASE / CORRUPTED if its q, k and v receivers all are, else CHANGED; an MLP and the
  logits follow their one receiver.

Around a rebased circuit ``b``, a receiver is BASE when every incoming edge contributes what it
contributes under ``b`` (both kept from a BASE sender, or both contribute nothing: removed, or from a
sender that is corrupted under ``b``). :func:`live_senders` then finds the CHANGED senders some
computed receiver reads, and at which positions. Shapes: K masks, S senders, R receivers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch

from ..graph import GraphLayout
from ..models.base import Adapter


class NodeState(IntEnum):
    """A node's (or receiver's) value under one keep-mask, relative to the two recorded runs."""

    BASE = 0  # equals the base run's: the clean run's, or a rebased circuit's (SparseBase.rebase)
    CORRUPTED = 1  # equals the corrupted run's
    CHANGED = 2  # neither: computed


BASE, CORRUPTED, CHANGED = NodeState.BASE.value, NodeState.CORRUPTED.value, NodeState.CHANGED.value


def supports_sparse(adapter: Adapter) -> bool:
    """Whether the adapter's family declares the additive residual the sparse path relies on.

    Only a declaration on the adapter's own class counts, so a family derived from an opted-in
    one (say a post-norm variant of Llama) falls back to the general path until it opts in.
    """
    return bool(type(adapter).__dict__.get("additive_residual", False))


@dataclass(frozen=True)
class StatePlan:
    """Per-mask node states: ``senders`` ``[K, S]`` and ``receivers`` ``[K, R]`` int8 :class:`NodeState`;
    ``live`` ``[K, S]`` bool: CHANGED senders whose output some computed receiver reads through a kept
    edge (the others change nothing the logits see, so they are not computed); ``full``: the live ones
    read at every position (the others are computed at the answer positions only)."""

    senders: torch.Tensor
    receivers: torch.Tensor
    live: torch.Tensor
    full: torch.Tensor  # [K, S] bool: live senders needed at every position (the rest: answer positions only)

    def select(self, rows: torch.Tensor) -> StatePlan:
        """The plan of the masks ``rows`` (indices or a ``[K]`` bool) only."""
        return StatePlan(self.senders[rows], self.receivers[rows], self.live[rows], self.full[rows])

    @property
    def logits(self) -> torch.Tensor:
        """``[K]`` the logits node's state."""
        return self.receivers[:, -1]

    def changed_nodes(self) -> torch.Tensor:
        """``[K]`` how many nodes (senders and the logits) each mask makes CHANGED."""
        return (self.senders == CHANGED).sum(1) + (self.logits == CHANGED)

    def computed_nodes(self) -> torch.Tensor:
        """``[K]`` how many nodes the sparse forward computes for each mask (live CHANGED senders, logits)."""
        return self.live.sum(1) + (self.logits == CHANGED)


@dataclass(frozen=True)
class BaseMask:
    """The circuit a :class:`SparseBase` was rebased on: ``keep`` ``[S, R]`` bool (dense keep-mask) and
    which of its senders ``[S]`` / receivers ``[R]`` read (or output) exactly the corrupted run's values."""

    keep: torch.Tensor
    corrupted_senders: torch.Tensor
    corrupted_receivers: torch.Tensor


def plan_states(layout: GraphLayout, keep: torch.Tensor, around: BaseMask | None = None,
                compute_all: bool = False) -> StatePlan:
    """States of every node under binary keep-masks ``[K, E]`` (values 0/1), in topological order,
    relative to the clean run or, with ``around``, to that circuit's run. With ``compute_all`` every
    CHANGED sender is live (a rebase needs every node's value, read or not)."""
    kd = layout.to_dense(keep.float()) > 0.5  # [K, S, R]
    dev = kd.device
    valid = layout.valid.to(dev)
    K = kd.shape[0]
    send = torch.full((K, layout.n_senders), BASE, dtype=torch.int8, device=dev)
    recv = torch.full((K, layout.n_receivers), BASE, dtype=torch.int8, device=dev)
    if around is not None:
        base_zero = ~around.keep.to(dev) | around.corrupted_senders.to(dev)[:, None]  # [S, R]: contributes nothing
        corr_s, corr_r = around.corrupted_senders.to(dev), around.corrupted_receivers.to(dev)

    def read(r0: int, r1: int, n: int) -> torch.Tensor:
        kept, v, st = kd[:, :n, r0:r1], valid[:n, r0:r1], send[:, :n, None]
        zero = ~kept | (st == CORRUPTED)  # contributes nothing beyond the corrupted run
        same = kept & (st == BASE)  # contributes what it contributes to the base run
        if around is not None:  # ... or nothing, where the base run's edge contributes nothing either
            bz = base_zero[:n, r0:r1]
            same = (same & ~bz) | (zero & bz)
        not_base = (v & ~same).any(1)  # [K, r1-r0]
        not_corr = (v & ~zero).any(1)
        out = torch.where(not_corr, torch.where(not_base, CHANGED, BASE), CORRUPTED).to(torch.int8)
        if around is not None:  # the base run's value is the corrupted one there: say so (heads need all 3)
            out[(out == BASE) & corr_r[r0:r1]] = CORRUPTED
        recv[:, r0:r1] = out
        return out

    for layer in range(layout.n_layers):
        r0, r1 = layout.attn_receivers(layer)
        qkv = read(r0, r1, layout.senders_before_attn(layer)).view(K, layout.n_heads, 3)
        same = qkv == BASE  # each receiver reads what it reads in the base run (also: corrupted in both)
        if around is not None:
            same |= (qkv == CORRUPTED) & corr_r[r0:r1].view(1, layout.n_heads, 3)
        heads = torch.where((qkv == CORRUPTED).all(-1), CORRUPTED, torch.where(same.all(-1), BASE, CHANGED))
        s0, s1 = layout.head_senders(layer)
        send[:, s0:s1] = heads.to(torch.int8)
        r = layout.mlp_receiver(layer)
        send[:, layout.mlp_sender(layer)] = read(r, r + 1, layout.senders_before_mlp(layer))[:, 0]
        if around is not None:  # a BASE sender whose base output is the corrupted run's is CORRUPTED
            for a, b in ((s0, s1), (layout.mlp_sender(layer), layout.mlp_sender(layer) + 1)):
                send[:, a:b][(send[:, a:b] == BASE) & corr_s[a:b]] = CORRUPTED
    r = layout.logits_receiver
    read(r, r + 1, layout.n_senders)
    if compute_all:
        live = send == CHANGED
        return StatePlan(send, recv, live, live)
    return StatePlan(send, recv, *live_senders(layout, kd, send, recv))


def live_senders(layout: GraphLayout, kd: torch.Tensor, send: torch.Tensor, recv: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(live, full)`` ``[K, S]`` bool, found in reverse topological order. ``live``: CHANGED senders read
    through a kept edge by a computed receiver (a CHANGED receiver of the CHANGED logits or of a live
    node); ``full``: live senders read at every position (by a computed k or v receiver, or by a receiver
    of a full node); the other live senders are needed at the answer positions only."""
    need = torch.zeros_like(recv, dtype=torch.bool)  # [K, R] receivers whose input is computed
    need[:, -1] = recv[:, -1] == CHANGED
    need_all = torch.zeros_like(need)  # ... at every position
    live = torch.zeros_like(send, dtype=torch.bool)
    full = torch.zeros_like(live)
    changed_recv = recv == CHANGED

    def mark(s0: int, s1: int) -> tuple[torch.Tensor, torch.Tensor]:
        kept = kd[:, s0:s1]
        live[:, s0:s1] = (kept & need[:, None]).any(-1) & (send[:, s0:s1] == CHANGED)
        full[:, s0:s1] = (kept & need_all[:, None]).any(-1) & live[:, s0:s1]
        return live[:, s0:s1], full[:, s0:s1]

    for layer in reversed(range(layout.n_layers)):  # the MLP first: a sequential MLP reads its layer's heads
        r = layout.mlp_receiver(layer)
        s = layout.mlp_sender(layer)
        lv, fl = mark(s, s + 1)
        need[:, r] = lv[:, 0] & changed_recv[:, r]
        need_all[:, r] = fl[:, 0] & changed_recv[:, r]
        r0, r1 = layout.attn_receivers(layer)
        lv, fl = mark(*layout.head_senders(layer))  # [K, H]
        need[:, r0:r1] = lv.repeat_interleave(3, 1) & changed_recv[:, r0:r1]
        kv = torch.tensor([False, True, True], device=lv.device).repeat(layout.n_heads)  # keys, values: every position
        need_all[:, r0:r1] = need[:, r0:r1] & (kv | fl.repeat_interleave(3, 1))
    return live, full
