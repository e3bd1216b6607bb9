"""Per-run state of a traced forward: sender outputs, patch deltas and gradient probes.

:class:`RunState` is the :class:`~circuits.runtime.block.BlockIO` of a traced run. It keeps
every sender group's output as it is written, and when a block reads a receiver it hands
back ``resid - Σ_s w_sv (z_s - z_s^ref)`` (the residual-sum identity; ``w = 1 - keep`` from
:meth:`~circuits.graph.GraphLayout.patch_weights`) and/or registers a gradient probe.

Shapes: K masks, B examples, B' = K·B rows (mask-major), P positions, d model width, S senders,
H query heads, dh head width.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..graph import GraphLayout, PatchWeights
from ..models.base import Adapter
from .block import Block, PlainIO, receiver_rms
from .position_sums import position_sums
from .postnorm import AttnLayer, post_norm_input
from .workspace import Workspace

GradCallback = Callable[[torch.Tensor, slice, torch.Tensor], None]
"""``(receivers, senders, grad)``: for a group of receivers (long tensor of receiver indices), the gradient
``[len(receivers), B', P, d]`` that the deltas of senders ``senders`` (a slice) pair with: ``∂loss/∂in_v``,
or for the heads of a post-norm layer, the gradient w.r.t. the receiver's copy of that layer's pre-norm sum
(:mod:`circuits.runtime.postnorm`). A score is ``Δ_s · grad_v`` for every ``s`` in ``senders``."""

SenderHook = Callable[[int, int, torch.Tensor], torch.Tensor]
"""``(s0, s1, z) -> z``: replace sender group ``s0:s1``'s output ``z`` [s1-s0, B', P, d] before anything reads it."""


class RunState:
    """Sender groups, their patch deltas, probes; reads receivers for :class:`~circuits.runtime.block.Block`."""

    #: above this share of q/k/v receivers with a partly patched input, every receiver gets its
    #: own input (one batched matmul) instead of the shared-input split of :meth:`_split_qkv`
    MIXED_SHARE_DENSE = 0.6

    def __init__(self, layout: GraphLayout, adapter: Adapter, W: PatchWeights | None, reference: torch.Tensor | None,
                 K: int, B: int, on_grad: GradCallback | None, sender_hook: SenderHook | None,
                 workspace: Workspace | None = None, keep_outputs: bool = True) -> None:
        self.layout, self.adapter, self.workspace = layout, adapter, workspace
        self.W, self.reference, self.K, self.B = W, reference, K, B
        self.on_grad, self.sender_hook = on_grad, sender_hook
        # (s0, s1, z, shared): z is [n, B', P, d], or [n, B, P, d] shared by all K masks; None once let go
        # (buffered runs that need not return them keep the newest group only: see _add)
        self.groups: list[tuple[int, int, torch.Tensor | None, bool]] = []
        self.keep_outputs = keep_outputs
        self.deltas: dict[int, torch.Tensor] = {}  # group -> z - z_ref: [n, K, B, P, d] ([n, B, P, d] if shared)
        self.leaves: list[torch.Tensor] = []
        # Without autograd, all deltas live in one [K, B*P, 1+S, d] buffer filled in place (sender s at
        # slot 1+s; slot 0 holds the residual of the receivers being read), and a receiver group's input
        # is one batched matmul over that residual and every upstream sender's delta.
        self.buffer: torch.Tensor | None = None
        # Post-norm families read head senders through their layer's norm (postnorm.py), not the buffer.
        self.post = adapter.post_norm
        self.buffered = W is not None and not torch.is_grad_enabled() and not self.post
        self.attn_layers: dict[int, AttnLayer] = {}  # post-norm: layer -> its pre-norm sum and deltas
        self.sender_deltas: dict[int, torch.Tensor] = {}  # post-norm: non-attention sender -> delta
        # buffered: [K, B*P, d] the sum of the deltas of senders 0..total_of-1 (see removed_sum)
        self.total: torch.Tensor | None = None
        self.total_of = 0
        # (layer, residual its attention read, MLP inputs over the senders before that attention [m*B, P, d],
        # the m masks they are of): what the q/k/v inputs' pass over the buffer also computed (see qkv)
        self.mlp_partial: tuple[int, torch.Tensor, torch.Tensor, list[int]] | None = None
        # the answer-position tail (buffered runs): [B'] positions at which the last layer's queries, heads
        # and MLP are computed (see qkv); None before it
        self.tail_at: torch.Tensor | None = None

    # ------------------------------------------------------------------ writes (senders)
    def emit(self, s0: int, s1: int, z: torch.Tensor) -> torch.Tensor:
        """Sender group ``s0:s1`` wrote ``z`` [s1-s0, B', P, d]: hook, remember, return what readers see."""
        if self.sender_hook is not None:
            z = self.sender_hook(s0, s1, z)
        if z.is_leaf and z.requires_grad:
            self.leaves.append(z)
        self._add(s0, s1, z, shared=False)
        return z

    def heads(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        return self.emit(*self.layout.head_senders(layer), z)

    def mlp(self, layer: int, m: torch.Tensor) -> torch.Tensor:
        s = self.layout.mlp_sender(layer)
        return self.emit(s, s + 1, m[None])[0]

    def add_prefix(self, s1: int, z: torch.Tensor) -> None:
        """Senders ``0..s1-1`` of a recorded run (``[s1, B, P, d]``), shared by every mask."""
        self._add(0, s1, z[:s1], shared=True)

    def _add(self, s0: int, s1: int, z: torch.Tensor, shared: bool) -> None:
        self.groups.append((s0, s1, z, shared))
        if not self.buffered:
            return
        n, P, d = s1 - s0, z.shape[-2], z.shape[-1]
        K, B = self.K, self.B
        if self.buffer is None:  # [K, B*P, 1+S, d]: per position, the residual read and every sender's delta
            shape = (K, B * P, 1 + self.layout.n_senders, d)
            self.buffer = (torch.empty(shape, dtype=z.dtype, device=z.device) if self.workspace is None
                           else self.workspace.empty("deltas", shape, z.dtype, z.device))
        zc = self.reference[s0:s1].to(z.dtype)  # [n, Bc, Pc, d]
        if self.tail_at is not None:  # the tail's outputs [n, B', 1, d]: at the answer positions only
            P = self.buffer.shape[1] // B
            at, ex = self.tail_at[:B], torch.arange(B, device=z.device)  # the same positions for every mask
            zc = zc.expand(n, B, P, d)[:, ex, at]  # [n, B, d]
            self.buffer.view(K, B, P, -1, d)[:, ex, at, 1 + s0:1 + s1] = (
                z.view(n, K, B, d) - zc[:, None]).permute(1, 2, 0, 3)
        elif shared:
            zc = zc.permute(1, 2, 0, 3)  # [Bc, Pc, n, d]
            out = self.buffer.view(K, B, P, -1, d)[:, :, :, 1 + s0:1 + s1]  # written in place: no temporaries
            out.copy_((z.permute(1, 2, 0, 3) - zc)[None])  # one recorded run shared by the K masks: broadcast over K
        else:
            out = self.buffer.view(K, B, P, -1, d)[:, :, :, 1 + s0:1 + s1]  # written in place: one pass
            torch.sub(z.view(n, K, B, P, d).permute(1, 2, 3, 0, 4), zc.permute(1, 2, 0, 3)[None], out=out)
        if not self.keep_outputs and len(self.groups) > 1:
            # later receivers read these senders' deltas from the buffer, and only the newest group's outputs are
            # read again (an MLP's input takes off its own layer's heads): older outputs are let go, so a run
            # holds one layer's, not [S, K*B, P, d], and the allocator can hand their memory to the next layer
            g0, g1, _, sh = self.groups[-2]
            self.groups[-2] = (g0, g1, None, sh)

    def _removed_sum(self, n: int) -> torch.Tensor:
        """``Σ_s Δ_s`` over senders ``0..n-1`` (what a receiver with every edge removed loses): ``[K, B*P, d]``,
        kept as a running sum that adds only the senders not summed before (``n`` never decreases in a run)."""
        if n < self.total_of:
            raise RuntimeError(f"the removed-edge sum covers {self.total_of} senders and cannot shrink to {n}")
        if self.total is None:
            self.total = self.buffer[:, :, 1:1 + n].sum(2)
        elif n > self.total_of:
            self.total.add_(self.buffer[:, :, 1 + self.total_of:1 + n].sum(2))
        self.total_of = n
        return self.total

    def _buffered_input(self, resid: torch.Tensor, Wl: torch.Tensor, masks: slice = slice(None),
                        reuse: str | None = None) -> torch.Tensor:
        """``resid - Σ_s w_sr Δ_s`` for the receivers of ``Wl`` [K, n, R] (senders ``0..n-1``; the K masks
        ``masks`` of the buffer) from the buffer: ``resid`` goes into slot 0 and one small matmul per position
        (a position's deltas stay in cache) takes weights ``[1, -w_0r, ..., -w_(n-1)r]`` over slots ``0..n``.
        Where fewer weights are below 1 than above 0 (a mask keeping few edges), slot 0 holds ``resid - Σ_s Δ_s``
        and the weights are ``[1, 1 - w_0r, ...]``; sparse weights are summed by rows (:func:`position_sums`).
        ``resid`` [K*B, P, d] -> ``[R, K*B, P, d]`` (a view of ``[K*B, P, R, d]``). With ``reuse`` (a name) and a
        workspace, the result is written into the workspace's tensor of that name: it must be used up before
        the next call with that name."""
        K, n, R = Wl.shape
        Bp, P, d = resid.shape
        buf = self.buffer[masks]  # [K, B*P, 1+S, d]
        # a mask that keeps few edges: around the residual with every edge removed, ``resid - Σ_s Δ_s``,
        # plus the kept share ``Σ_s (1 - w_sr) Δ_s`` (few nonzeros: position_sums reads only those rows)
        if Wl.numel() - int(Wl.eq(1).sum()) < int(Wl.count_nonzero()):  # fewer kept than removed weights...
            torch.sub(resid.view(K, -1, d), self._removed_sum(n)[masks], out=buf[:, :, 0])
            coef = 1 - Wl.transpose(1, 2)
        else:  # ... else around ``resid`` (no [rows, R, d] copy of it for the matmul to add to)
            buf[:, :, 0] = resid.view(K, -1, d)
            coef = -Wl.transpose(1, 2)
        coef = torch.cat([Wl.new_ones(K, R, 1), coef], 2)  # [K, R, 1+n]
        out = None if reuse is None or self.workspace is None else self.workspace.empty(
            reuse, (Bp * P, R, d), resid.dtype, resid.device)
        x = position_sums(buf, coef, out)  # [K*B*P, R, d]
        return x.view(Bp, P, R, d).permute(2, 0, 1, 3)

    def _delta(self, gi: int) -> torch.Tensor:
        if gi not in self.deltas:
            s0, s1, z, shared = self.groups[gi]
            n, (_, P, d) = s1 - s0, z.shape[1:]
            zc = self.reference[s0:s1].to(z.dtype)
            self.deltas[gi] = z - zc if shared else z.reshape(n, self.K, self.B, P, d) - zc.unsqueeze(1)
        return self.deltas[gi]

    def recorded(self) -> torch.Tensor:
        """Every sender's output, detached: ``[S, B', P, d]`` (needs ``keep_outputs``)."""
        return torch.cat([z.detach().repeat(1, self.K, 1, 1) if shared else z.detach() for _, _, z, shared in self.groups], dim=0)

    # ------------------------------------------------------------------ reads (receivers)
    def qkv(self, block, x: torch.Tensor, at: torch.Tensor | None):
        """q, k, v of a layer's heads, each receiver reading its own input where patched or probed."""
        layer, lay = block.layer, self.layout
        r0, r1 = lay.attn_receivers(layer)
        n = lay.senders_before_attn(layer)
        if at is not None:
            return self._tail_qkv(block, x, at, r0, r1, n)
        if self.buffered:
            split = self._split_qkv(block, x, r0, r1, n)
            if split is not None:  # few receivers read their own input: shared projections + those few
                return split
            if bool(self.W[:, :n, r0:r1].any()):  # each receiver its own input; the MLP's (receiver r1) from
                # the same pass over the buffer; projected and (the MLP's row) used up within this layer
                x_all = self._buffered_input(x, self.W[:, :n, r0:r1 + 1], reuse="layer inputs")
                self.mlp_partial = (layer, x, x_all[-1], list(range(self.K)))
                return block.project_own(x_all, lay)  # the MLP's row is not projected
        x_attn = self.receiver_input(x, r0, r1, n, shared_probe=self.adapter.linear_qkv)
        if x_attn is None:  # every q/k/v input is the shared residual
            h = block.attn_norm(x)
            q, k, v = block.project(h, h, h)
            if self.on_grad is not None and x.requires_grad:
                self._probe_shared_qkv(block, x, (q, k, v), n)
            return q, k, v
        return block.project_own(x_attn, lay)

    def mlp_input(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        part, self.mlp_partial = self.mlp_partial, None
        r = self.layout.mlp_receiver(layer)
        if self.tail_at is not None:  # x: [B', 1, d], the residual at the answer positions
            W = self.W[:, :self.layout.senders_before_mlp(layer), r:r + 1]
            return self._input_at(x[:, 0], W)[0] if bool(W.any()) else x
        if part is not None and part[0] == layer:
            return self._finish_mlp_input(layer, x, *part[1:])
        x_in = self.receiver_input(x, r, r + 1, self.layout.senders_before_mlp(layer))
        return x if x_in is None else x_in[0]

    def logits_input(self, x: torch.Tensor, at: torch.Tensor | None = None, tail: bool = False) -> torch.Tensor:
        """The logits receiver's input ``[B', P, d]`` from the final residual ``x``; with ``at`` (``[B']``
        positions) only there: ``[B', 1, d]``. With ``tail`` the last layer ran at ``at`` only, and ``x`` is
        already ``[B', 1, d]`` there."""
        r, S = self.layout.logits_receiver, self.layout.n_senders
        if at is not None and self.buffered and bool(self.W[:, :, r].any()):
            # the answer rows of the residual and of the delta buffer only: P times less to read
            resid = (x if tail else Block.rows_at(x, at))[:, 0]  # [B', d]
            return self._input_at(resid, self.W[:, :, r:r + 1], at)[0]  # [B', 1, d]
        if tail:
            return x
        x_in = self.receiver_input(x, r, r + 1, S)
        x_in = x if x_in is None else x_in[0]
        return x_in if at is None else Block.rows_at(x_in, at)

    def _input_at(self, resid: torch.Tensor, Wl: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        """Inputs at the answer positions ``at`` (default: the tail's) of the receivers of ``Wl`` [K, n, R]
        (senders ``0..n-1``), from the residual there ``resid`` [B', d] and the buffer's rows there:
        ``[R, B', 1, d]``."""
        at = self.tail_at if at is None else at
        K, n, R = Wl.shape
        Bp, d = resid.shape
        buf = Block.rows_at(self.buffer.view(Bp, -1, self.buffer.shape[2], d)[:, :, 1:1 + n], at)[:, 0]  # [B', n, d]
        w = Wl.transpose(1, 2).repeat_interleave(self.B, 0)  # [B', R, n]: each row its mask's weights
        x = torch.baddbmm(resid[:, None], w, buf, alpha=-1)  # [B', R, d]
        return x.permute(1, 0, 2)[:, :, None]

    def receiver_input(self, resid: torch.Tensor, r0: int, r1: int, n_senders: int,
                       shared_probe: bool = False) -> torch.Tensor | None:
        """Inputs of receivers ``r0:r1`` (``[r1-r0, B', P, d]``), or None when they all read ``resid`` unchanged.

        With ``shared_probe`` the caller probes unpatched receivers itself (q/k/v hooks), so
        None is returned for them even when gradients are requested (not for post-norm families,
        whose receivers always get their own input when probed).
        """
        if self.post:
            return self._post_norm_input(resid, r0, r1, n_senders)
        x = None
        if self.W is not None:
            Wl = self.W[:, :n_senders, r0:r1]  # [K, n, R_l]
            K, B = self.K, self.B
            Bp, P, d = resid.shape
            # zero weights change nothing -- unless the caller differentiates w.r.t. them
            if self.buffered and bool(Wl.any()):
                x = self._buffered_input(resid, Wl)
            elif Wl.requires_grad or bool(Wl.any()):
                corr = None
                for gi, (s0, s1, _, shared) in enumerate(self.groups):
                    if s0 >= n_senders:
                        break
                    Wg = Wl[:, s0:s1]
                    if not Wg.requires_grad and not bool(Wg.any()):
                        continue
                    eq = "ksr,sbpd->rkbpd" if shared else "ksr,skbpd->rkbpd"
                    term = torch.einsum(eq, Wg, self._delta(gi))  # [R_l, K, B, P, d]
                    corr = term if corr is None else corr + term
                x = (resid.view(1, K, B, P, d) - corr).reshape(r1 - r0, Bp, P, d)
        if self.on_grad is not None and resid.requires_grad and not (x is None and shared_probe):
            if x is None:  # a view of its own, so its gradient is this receiver's share only
                x = resid[None].expand(r1 - r0, *resid.shape)
            cb, senders, idx = self.on_grad, slice(0, n_senders), torch.arange(r0, r1, device=resid.device)
            x.register_hook(lambda grad: cb(idx, senders, grad))
        return x

    def _tail_qkv(self, block, x: torch.Tensor, at: torch.Tensor, r0: int, r1: int, n: int):
        """q (``[B', H, 1, dh]``, at the positions ``at``), k, v (``[B', H, P, dh]``) of the last layer when only
        the answer logits count (buffered runs): the queries' inputs are assembled at ``at`` only; the layer's
        heads and MLP then write and read the buffer there (:meth:`_add`, :meth:`mlp_input`)."""
        if self.W is None or not self.buffered:
            raise ValueError("the answer-position tail needs a buffered patched run (no probes, no records)")
        self.tail_at = at
        Wl = self.W[:, :n, r0:r1]
        if not bool(Wl.any()):
            return PlainIO().qkv(block, x, at)
        split = self._split_qkv(block, x, r0, r1, n)
        self.mlp_partial = None  # the tail's MLP input is assembled at ``at`` (mlp_input)
        if split is not None:  # few receivers read their own input: the split path, queries taken at ``at``
            q, k, v = split
            return q[torch.arange(len(at), device=at.device), :, at][:, :, None], k, v
        H = self.layout.n_heads
        slot = torch.arange(3 * H, device=x.device) % 3
        x_kv = self._buffered_input(x, Wl[:, :, slot != 0], reuse="layer inputs")  # [2H, B', P, d]
        x_q = self._input_at(Block.rows_at(x, at)[:, 0], Wl[:, :, slot == 0])  # [H, B', 1, d]
        return block.project_tail(x_q, x_kv)

    def _finish_mlp_input(self, layer: int, x: torch.Tensor, before: torch.Tensor, partial: torch.Tensor,
                          masks: list[int]) -> torch.Tensor:
        """The MLP receiver's input ``[B', P, d]``. For the masks ``masks``, from ``partial`` (their inputs as far
        as the senders before the layer's attention go, computed with the q/k/v inputs from ``before``, the
        residual the attention read): add what the attention added (``x - before``) and take off the layer's
        own heads' weighted deltas (sequential blocks; a parallel block's MLP reads exactly those senders).
        The other masks' inputs are assembled from the buffer as usual."""
        lay, B = self.layout, self.B
        r, n0, n1 = lay.mlp_receiver(layer), lay.senders_before_attn(layer), lay.senders_before_mlp(layer)
        if n1 == n0 and len(masks) == self.K:
            return partial
        out = torch.empty_like(x)
        have = {k: i for i, k in enumerate(masks)}
        if n1 > n0:  # the layer's own heads: live outputs [H, K, B, P, d] (never shared), weights [K, H]
            z, Wh = self._senders(n0, n1), self.W[:, n0:n1, r]
            ref = self.reference[n0:n1].to(x.dtype)
            ref_share = (Wh @ ref.flatten(1)).view(self.K, *ref.shape[1:])  # one pass over the reference
        for k in range(self.K):  # masks, not edges
            rows = slice(k * B, (k + 1) * B)
            if k in have:
                i = have[k]
                o = partial[i * B:(i + 1) * B]
                if n1 > n0:
                    o = o + (x[rows] - before[rows])
                    if bool(Wh[k].any()):  # one [1, H] x [H, B*P*d] product, minus the reference's share
                        o = o - ((Wh[k:k + 1] @ z[:, k].flatten(1)).view(B, *x.shape[1:]) - ref_share[k])
                out[rows] = o
            elif bool(self.W[k, :n1, r].any()):
                out[rows] = self._buffered_input(x[rows], self.W[k:k + 1, :n1, r:r + 1], slice(k, k + 1))[0]
            else:
                out[rows] = x[rows]
        return out

    # ------------------------------------------------------------------ post-norm families
    def _post_norm_input(self, resid: torch.Tensor, r0: int, r1: int, n: int) -> torch.Tensor | None:
        """:meth:`receiver_input` when each attention layer's output is normalised (postnorm.py)."""
        if self.W is None and (self.on_grad is None or not resid.requires_grad):
            return None
        lay = self.layout
        stride = lay.n_heads + 1  # input and MLPs: senders 0, H+1, 2(H+1), ...
        layers = [self._attn_layer(layer) for layer in range(lay.n_layers) if lay.head_senders(layer)[1] <= n]
        W = None if self.W is None else self.W[:, :n, r0:r1]
        nonattn = None
        if W is not None and (W.requires_grad or bool(W[:, 0:n:stride].any())):
            deltas = [self._sender_delta(s) for s in range(0, n, stride)]  # [1, K|1, B, P, d] each
            nonattn = torch.cat([t.expand(1, self.K, *t.shape[2:]) for t in deltas])
        probe = None if self.on_grad is None else (self.on_grad, torch.arange(r0, r1, device=resid.device))
        return post_norm_input(resid, W, nonattn, layers, self.K, n, stride, probe, r1 - r0)

    def _senders(self, s0: int, s1: int) -> torch.Tensor:
        """Live outputs of senders ``s0:s1`` as ``[n, K|1, B, P, d]`` (1 when shared by every mask)."""
        for g0, g1, z, shared in self.groups:
            if g0 <= s0 and s1 <= g1:
                if z is None:
                    raise KeyError(f"senders {s0}:{s1} were let go (keep_outputs=False)")
                z = z[s0 - g0:s1 - g0]
                return z[:, None] if shared else z.view(s1 - s0, self.K, self.B, *z.shape[2:])
        raise KeyError(f"senders {s0}:{s1} were not written yet")

    def _sender_delta(self, s: int) -> torch.Tensor:
        """``z_s - z_s^ref`` of one non-attention sender: ``[1, K|1, B, P, d]``."""
        if s not in self.sender_deltas:
            self.sender_deltas[s] = self._senders(s, s + 1) - self.reference[s:s + 1, None].to(self.groups[0][2].dtype)
        return self.sender_deltas[s]

    def _attn_layer(self, layer: int) -> AttnLayer:
        """Layer ``layer``'s heads as later receivers read them: live pre-norm sum, deltas, norm."""
        if layer not in self.attn_layers:
            s0, s1 = self.layout.head_senders(layer)
            z = self._senders(s0, s1)  # [H, K|1, B, P, d]
            b_O = self.adapter.attn_weights(layer).b_O
            pre = z.sum(0) if b_O is None else z.sum(0) + b_O
            delta = None if self.reference is None else z - self.reference[s0:s1, None].to(z.dtype)
            a = self.adapter
            norm = a.post_attn_norm(layer)
            self.attn_layers[layer] = AttnLayer(slice(s0, s1), pre, delta, norm,
                                                receiver_rms(norm, a.rms_norm, a.rms_weight_offset))
        return self.attn_layers[layer]

    def _split_qkv(self, block, resid: torch.Tensor, r0: int, r1: int, n: int):
        """q, k, v (``[B', H, P, dh]``, k/v per query head, before rotary) of a patched layer, or
        None when the dense per-receiver path is as cheap.

        Per mask, a q/k/v receiver is *kept* (no incoming edge patched: it reads ``resid``),
        *removed* (every incoming edge patched with weight 1: it reads ``resid - Σ_s Δ_s``, the
        same for all such receivers), or *mixed*. Kept and removed receivers share two
        normalised inputs projected for all heads at once; only mixed receivers get their own
        input (``resid`` minus their weighted deltas), norm and projection.
        """
        K, B, H = self.K, self.B, self.layout.n_heads
        Wl = self.W[:, :n, r0:r1]  # [K, n, 3H]
        touched = Wl.ne(0).any(1)  # [K, 3H]
        if not bool(touched.any()):
            return None  # unpatched layer: the shared path (which also serves probes)
        removed = Wl.eq(1).all(1)
        mixed = touched & ~removed
        if float(mixed.float().mean()) > self.MIXED_SHARE_DENSE or bool(mixed.all()):
            return None  # (with none kept or removed there would be nothing to share)
        Bp, P, d = resid.shape

        def shared(x: torch.Tensor) -> list[torch.Tensor]:
            h = block.attn_norm(x)
            return list(block.project(h, h, h))

        rows = lambda m: m.repeat_interleave(B, 0)[:, :, None, None]  # noqa: E731  [K, H] -> [B', H, 1, 1]
        per_head = removed.view(K, H, 3)  # [K, H, q/k/v slot]
        # the residual's projections serve kept receivers; EAP-ranked circuits often leave none past layer 0
        out = shared(resid) if bool((~touched).any()) else None  # [B', H, P, dh] each
        if bool(removed.any()):  # Σ_s Δ_s over the senders so far: what a fully patched receiver loses
            gone = shared((resid.reshape(K, -1, d) - self._removed_sum(n)).view(Bp, P, d))
            out = gone if out is None else [torch.where(rows(per_head[:, :, c]), gone[c], out[c]) for c in range(3)]
        W_mlp = self.W[:, :n, r1]  # [K, n]: the MLP receiver (index r1) over the same senders
        partial, masks = [], []
        for k in mixed.any(1).nonzero().flatten().tolist():  # masks, not edges
            rr = mixed[k].nonzero().flatten()  # this mask's mixed receivers, local to the layer
            mlp = bool(W_mlp[k].any())  # its MLP input over these senders joins the same pass over the buffer
            Wk = torch.cat([Wl[k:k + 1][:, :, rr], W_mlp[k:k + 1, :, None]], 2) if mlp else Wl[k:k + 1][:, :, rr]
            x = self._buffered_input(resid[k * B:(k + 1) * B], Wk, slice(k, k + 1))  # [m (+1), B, P, d]
            if mlp:
                partial.append(x[-1])
                masks.append(k)
                x = x[:-1]
            head, slot = self.layout.qkv_slot(rr)
            y = block.project_rows(x, head, slot)  # [m, B, P, dh]
            for c in range(3):
                sel = slot == c
                if bool(sel.any()):
                    out[c][k * B:(k + 1) * B, head[sel]] = y[sel].transpose(0, 1)
        if masks:
            self.mlp_partial = (block.layer, resid, torch.cat(partial), masks)
        return tuple(out)

    def _probe_shared_qkv(self, block, resid: torch.Tensor, qkv, n_senders: int) -> None:
        """Report each head's q/k/v input gradient on the shared path.

        ``grad_in = VJP_norm(resid)(grad_qkv_h @ W_h^T)``: the per-head projection's backward
        followed by the norm's vector-Jacobian product, vmapped over heads.
        """
        from torch.func import vjp, vmap

        _, norm_vjp = vjp(block.attn_norm, resid.detach())
        batched_vjp = vmap(norm_vjp)
        w = self.adapter.attn_weights(block.layer)
        H = qkv[0].shape[1]
        heads = torch.arange(H, device=resid.device)
        # The hooks must not reference this RunState: it holds the run's activations, and a
        # cycle through an autograd node is never collected (it leaked every pass's
        # activations until the caller's job ended).
        cb = self.on_grad
        for slot, (t, W) in enumerate(zip(qkv, (w.W_Q, w.W_K, w.W_V))):
            idx = self.layout.qkv_receiver(block.layer, heads, slot)

            def hook(grad: torch.Tensor, W=W, idx=idx) -> None:
                g_in = head_input_grad(grad, W.detach())  # [H, B', P, d], post-norm
                cb(idx, slice(0, n_senders), batched_vjp(g_in)[0])

            t.register_hook(hook)


def head_input_grad(grad: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Per query head, the gradient w.r.t. its projection's input: ``[B, H, P, dh]`` x ``W [Hw, d, dh]`` -> ``[H, B, P, d]``.

    With GQA (``Hw < H``), query head ``h = g * rep + r`` used kv head ``g``.
    """
    B, H, P, dh = grad.shape
    Hw = W.shape[0]
    if Hw == H:
        return torch.einsum("bhpe,hde->hbpd", grad, W)
    rep = H // Hw
    out = torch.einsum("bgrpe,gde->grbpd", grad.view(B, Hw, rep, P, dh), W)
    return out.reshape(H, B, P, W.shape[1])
