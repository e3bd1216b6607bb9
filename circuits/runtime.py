"""Traced forward: the model run in residual-stream form, with edge patching and gradient probes.

One mechanism serves every method:

* **record** the outputs of every sender (``input``, each head, each MLP) as ``[S, B, P, d]``;
* **patch** edges: with per-edge weights ``w = 1 - mask`` (``[S, R]`` or a batch ``[K, S, R]``),
  receiver ``v`` reads ``resid_v - Σ_s w_sv (z_s - z_s^corr)`` -- the residual-sum identity,
  one einsum per sender group and receiver group, never a loop over edges;
* **probe** receivers: ``on_grad(receivers, n_senders, grad)`` is called during backward with
  ``grad = ∂loss/∂in_v`` (``[len(receivers), B', P, d]``) for a group of receivers (a long
  tensor of receiver indices) that all read senders ``0..n_senders-1``. Where a layer is not
  patched, its q/k/v receivers share one normalised residual, and their per-head input
  gradients are recovered from the q/k/v gradients (one per-head matmul) and the norm's
  vector-Jacobian product, instead of running the norm and projections once per receiver;
* **hook** sender outputs (``sender_hook(s0, s1, z) -> z``) to interpolate or replace them.

Shapes: B examples, P positions, d model width, H heads, K masks; with K masks the batch
dimension of every activation is ``K * B`` (mask-major).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .graph import Graph
from .models import Adapter, get_adapter, graph_for
from .models.base import apply_rotary

GradCallback = Callable[[torch.Tensor, int, torch.Tensor], None]
SenderHook = Callable[[int, int, torch.Tensor], torch.Tensor]


@dataclass
class RunOutput:
    """Result of :meth:`TracedModel.run`.

    ``logits``: ``[B', P, V]`` (``B' = K*B`` with K masks); ``senders``: ``[S, B', P, d]``
    sender outputs when ``record=True`` (detached), else None.
    """

    logits: torch.Tensor
    senders: torch.Tensor | None = None
    leaves: list[torch.Tensor] = field(default_factory=list)  # grad-requiring leaves (for autograd.grad)
    resid: list[torch.Tensor] | None = None  # residual [B', P, d] at the start of each layer, then the final one


@dataclass
class Prefix:
    """A run's state at the start of layer ``layer``, from which masked runs can resume.

    ``resid``: ``[B, P, d]`` residual entering the layer; ``senders``: ``[S, B, P, d]`` live sender
    outputs of that run (only those before ``layer`` are read). Masks given with a prefix must
    not differ from that run's mask on edges into layers before ``layer``.
    """

    layer: int
    resid: torch.Tensor
    senders: torch.Tensor


def causal_mask(attention_mask: torch.Tensor | None, B: int, P: int, device: torch.device) -> torch.Tensor:
    """Bool ``[B, 1, P, P]``: causal, padded keys hidden; every query may see itself (no empty rows)."""
    i = torch.arange(P, device=device)
    mask = (i[None, :] <= i[:, None])[None, None].expand(B, 1, P, P)
    if attention_mask is not None:
        real = attention_mask.bool()[:, None, None, :]
        mask = (mask & real) | torch.eye(P, dtype=torch.bool, device=device)[None, None]
    return mask


def default_position_ids(attention_mask: torch.Tensor | None, B: int, P: int, device: torch.device) -> torch.Tensor:
    """Positions counted over real tokens (left padding safe): ``[B, P]`` long."""
    if attention_mask is None:
        return torch.arange(P, device=device)[None].expand(B, P)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class TracedModel(nn.Module):
    """A `transformers` causal LM with every sender output and receiver input addressable.

    >>> tm = TracedModel(model)            # graph built from the config
    >>> out = tm.run(ids, attention_mask, record=True)
    >>> patched = tm.run(ids, attention_mask, corrupted=corr.senders, patch=1 - mask)
    """

    def __init__(self, model: nn.Module, graph: Graph | None = None) -> None:
        super().__init__()
        self.model = model
        self.adapter: Adapter = get_adapter(model)
        self.graph = graph if graph is not None else graph_for(model)
        g, a = self.graph, self.adapter
        if (g.n_layers, g.n_heads, g.parallel_attn_mlp) != (a.n_layers, a.n_heads, a.parallel_attn_mlp):
            raise ValueError(
                f"graph ({g.n_layers} layers x {g.n_heads} heads, parallel={g.parallel_attn_mlp}) does not match the model "
                f"({a.n_layers} x {a.n_heads}, parallel={a.parallel_attn_mlp}); build it with circuits.graph_for(model)"
            )

    # ------------------------------------------------------------------ index helpers
    def heads_senders(self, layer: int) -> tuple[int, int]:
        """Sender index range of layer ``layer``'s heads."""
        s0 = 1 + layer * (self.graph.n_heads + 1)
        return s0, s0 + self.graph.n_heads

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * (self.graph.n_heads + 1) + self.graph.n_heads

    def attn_receivers(self, layer: int) -> tuple[int, int]:
        """Receiver index range of layer ``layer``'s q/k/v inputs (head-major, q,k,v interleaved)."""
        r0 = layer * (3 * self.graph.n_heads + 1)
        return r0, r0 + 3 * self.graph.n_heads

    def mlp_receiver(self, layer: int) -> int:
        return layer * (3 * self.graph.n_heads + 1) + 3 * self.graph.n_heads

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ------------------------------------------------------------------ the forward
    def run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        corrupted: torch.Tensor | None = None,
        patch: torch.Tensor | None = None,
        record: bool = False,
        on_grad: GradCallback | None = None,
        sender_hook: SenderHook | None = None,
        input_requires_grad: bool = False,
        logit_positions: torch.Tensor | None = None,
        record_resid: bool = False,
        resume: Prefix | None = None,
    ) -> RunOutput:
        """Run the model; optionally record senders, patch edges, probe receivers.

        Args:
            input_ids: ``[B, P]`` token ids.
            attention_mask: ``[B, P]`` 1 = real token (left padding supported).
            position_ids: ``[B, P]``; default counts real tokens.
            corrupted: ``[S, Bc, Pc, d]`` sender outputs that removed edges read (Bc = B and
                Pc = P, or 1 for a broadcast such as a mean or zero ablation).
            patch: weight of the corrupted value per edge, ``1 - mask``: dense ``[S, R]`` or
                ``[K, S, R]`` (K masks evaluated together; output batch is ``K * B``),
                or per edge ``[E]`` / ``[K, E]``. Fractional values interpolate.
            record: return all sender outputs (detached) as ``RunOutput.senders``.
            on_grad: called during backward with each receiver group's input gradient.
            sender_hook: ``(s0, s1, z) -> z`` applied to each sender group's output
                ``z`` [s1-s0, B', P, d] before anything reads it. A hook may return a leaf that
                requires grad; it is listed in ``RunOutput.leaves``.
            input_requires_grad: make the embedding output a leaf that requires grad, so a
                backward pass reaches every receiver without touching parameter grads.
            logit_positions: ``[B]`` positions; when given, logits are computed only there
                and returned as ``[B', 1, V]`` (metrics then read position 0). Skips most of
                the unembedding cost for large vocabularies.
            record_resid: return the residual at the start of every layer (``RunOutput.resid``).
            resume: start at ``resume.layer`` from a recorded run instead of the embedding
                (its senders are shared by all K masks); used by exact edge effects, where a
                mask that only differs in layer l need not recompute layers < l.
        """
        g, a = self.graph, self.adapter
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, positions], got shape {tuple(input_ids.shape)}")
        B, P = input_ids.shape
        dev = input_ids.device
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, B, P, dev)
        W = self._patch_weights(patch, dev)
        K = 1 if W is None else W.shape[0]
        if W is not None:
            if corrupted is None:
                raise ValueError("patching needs the corrupted run's sender outputs: pass corrupted=run(corrupted_ids, record=True).senders")
            if corrupted.dim() != 4 or corrupted.shape[0] != g.n_senders or corrupted.shape[2] not in (1, P) or corrupted.shape[1] not in (1, B):
                raise ValueError(
                    f"corrupted sender outputs must be [S={g.n_senders}, B={B} (or 1), P={P} (or 1), d]; got {tuple(corrupted.shape)}. "
                    "Clean and corrupted batches must have the same shape."
                )
        mask = causal_mask(attention_mask, B, P, dev)
        pos_b = position_ids  # [B, P], for the embedding
        if K > 1:
            mask = mask.repeat(K, 1, 1, 1)
            position_ids = position_ids.repeat(K, 1)
        state = _State(self, W, corrupted, K, B, on_grad, sender_hook)
        H = g.n_heads
        if resume is None:
            start = 0
            x0 = a.embed(input_ids, pos_b)  # [B, P, d]
            if K > 1:
                x0 = x0.repeat(K, 1, 1)
            if input_requires_grad:
                x0 = x0.detach().requires_grad_(True)
                state.leaves.append(x0)
            resid = state.emit(0, 1, x0[None])[0]
        else:
            start = resume.layer
            state.add_prefix(1 + start * (H + 1), resume.senders)
            resid = resume.resid.repeat(K, 1, 1) if K > 1 else resume.resid
        resids = [] if record_resid else None
        rot = a.rotary(resid, position_ids)
        # Nothing patched, recorded or probed, and only the answer positions' logits wanted:
        # the last layer need only run its queries and MLP there (keys/values still see all).
        tail = (logit_positions is not None and W is None and not record and not record_resid
                and on_grad is None and sender_hook is None and not input_requires_grad)
        answer_pos = None
        if tail:
            answer_pos = logit_positions.to(dev).long().repeat(K)
        for layer in range(start, g.n_layers):
            if tail and layer == g.n_layers - 1:
                resid = self._answer_layer(layer, resid, rot, mask, answer_pos)  # [B', 1, d]
                break
            if resids is not None:
                resids.append(resid)
            s_heads0, s_heads1 = self.heads_senders(layer)
            r0, r1 = self.attn_receivers(layer)
            norm = a.attn_norm(layer)
            qkv = state.split_qkv(layer, resid, r0, r1, s_heads0) if state.buffered else None
            x_attn = None if qkv is not None else state.receiver_input(resid, r0, r1, n_senders=s_heads0, shared_probe=True)
            if qkv is not None:  # few receivers read their own input: shared projections + those few
                q, k, v = qkv
            elif x_attn is None:  # every q/k/v input is the shared residual
                h = norm(resid)
                q, k, v = a.query_head_qkv(layer, h, h, h)
                if state.on_grad is not None and resid.requires_grad:
                    state.probe_shared_qkv(layer, norm, resid, (q, k, v), r0, s_heads0)
            else:  # [3H, B', P, d]: each receiver reads its own (patched or probed) input
                h = norm(x_attn).view(H, 3, *x_attn.shape[1:])
                q, k, v = a.project_qkv(layer, h[:, 0], h[:, 1], h[:, 2])
            if rot is not None:
                q, k = apply_rotary(q, *rot), apply_rotary(k, *rot)
            ctx = a.attend(layer, q, k, v, mask)
            z, b_O = a.head_outputs(layer, ctx)  # [H, B', P, d]
            z = state.emit(s_heads0, s_heads1, z)
            attn_out = z.sum(0) if b_O is None else z.sum(0) + b_O
            mr = self.mlp_receiver(layer)
            if g.parallel_attn_mlp:
                x_mlp = state.receiver_input(resid, mr, mr + 1, n_senders=s_heads0)
                resid_mlp = resid
                resid = resid + attn_out
            else:
                resid = resid + attn_out
                x_mlp = state.receiver_input(resid, mr, mr + 1, n_senders=s_heads1)
                resid_mlp = resid
            m_in = resid_mlp if x_mlp is None else x_mlp[0]
            m = a.mlp(layer)(a.mlp_norm(layer)(m_in))
            m = state.emit(s_heads1, s_heads1 + 1, m[None])[0]
            resid = resid + m
        if resids is not None:
            resids.append(resid)
        R = g.n_receivers
        x_out = state.receiver_input(resid, R - 1, R, n_senders=g.n_senders)
        final = resid if x_out is None else x_out[0]
        if logit_positions is not None and not (tail and start < g.n_layers):
            pos = logit_positions.to(dev).long().repeat(K)
            final = final[torch.arange(final.shape[0], device=dev), pos][:, None]  # [B', 1, d]
        logits = a.unembed(final)
        return RunOutput(logits, state.recorded() if record else None, state.leaves, resids)

    def _answer_layer(
        self, layer: int, resid: torch.Tensor, rot, mask: torch.Tensor, pos: torch.Tensor
    ) -> torch.Tensor:
        """Layer ``layer`` computed at one position per row: ``resid`` [B', P, d] -> [B', 1, d].

        Keys and values come from every position; queries, the output projection and the
        MLP run at ``pos`` ([B']) only. Used for the last layer when only answer logits count.
        """
        a = self.adapter
        rows = torch.arange(resid.shape[0], device=resid.device)
        h = a.attn_norm(layer)(resid)
        q, k, v = a.query_head_qkv(layer, h[rows, pos][:, None], h, h)  # q: [B', H, 1, dh]
        if rot is not None:
            cos, sin = rot
            q = apply_rotary(q, cos[rows, pos][:, None], sin[rows, pos][:, None])
            k = apply_rotary(k, cos, sin)
        ctx = a.attend(layer, q, k, v, mask[rows, :, pos][:, :, None], q_pos=pos[:, None])
        z, b_O = a.head_outputs(layer, ctx)  # [H, B', 1, d]
        attn_out = z.sum(0) if b_O is None else z.sum(0) + b_O
        x = resid[rows, pos][:, None]  # [B', 1, d]
        if self.graph.parallel_attn_mlp:
            return x + attn_out + a.mlp(layer)(a.mlp_norm(layer)(x))
        x = x + attn_out
        return x + a.mlp(layer)(a.mlp_norm(layer)(x))

    def _patch_weights(self, patch: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """Normalise ``patch`` to dense float ``[K, S, R]`` (None = no patching)."""
        if patch is None:
            return None
        g = self.graph
        if not torch.is_tensor(patch):
            raise TypeError("patch must be a tensor of per-edge corrupted weights (1 - mask)")
        if patch.shape[-1] == g.n_edges and patch.dim() in (1, 2):
            patch = g.to_dense(patch.float())
        if patch.shape[-2:] != (g.n_senders, g.n_receivers) or patch.dim() not in (2, 3):
            raise ValueError(
                f"patch must be [E={g.n_edges}], [K, E], [S={g.n_senders}, R={g.n_receivers}] or [K, S, R]; got {tuple(patch.shape)}"
            )
        if patch.dim() == 2:
            patch = patch[None]
        patch = patch.to(device=device, dtype=self.dtype)
        return patch * g.valid.to(device)  # non-edges never patch


class _State:
    """Per-run bookkeeping: sender groups, their patch deltas, probes."""

    def __init__(self, tm: TracedModel, W, corrupted, K: int, B: int, on_grad, sender_hook) -> None:
        self.tm, self.W, self.corrupted, self.K, self.B = tm, W, corrupted, K, B
        self.on_grad, self.sender_hook = on_grad, sender_hook
        # (s0, s1, z, shared): z is [n, B', P, d], or [n, B, P, d] shared by all K masks
        self.groups: list[tuple[int, int, torch.Tensor, bool]] = []
        self.deltas: dict[int, torch.Tensor] = {}  # group -> z - z_corr: [n, K, B, P, d] ([n, B, P, d] if shared)
        self.leaves: list[torch.Tensor] = []
        # Without autograd, all deltas live in one [K, S, B*P*d] buffer filled in place, and a
        # receiver group's correction is one batched matmul over every upstream sender.
        self.buffer: torch.Tensor | None = None
        self.buffered = W is not None and not torch.is_grad_enabled()

    def emit(self, s0: int, s1: int, z: torch.Tensor) -> torch.Tensor:
        if self.sender_hook is not None:
            z = self.sender_hook(s0, s1, z)
        if z.is_leaf and z.requires_grad:
            self.leaves.append(z)
        self._add(s0, s1, z, shared=False)
        return z

    def add_prefix(self, s1: int, z: torch.Tensor) -> None:
        """Senders ``0..s1-1`` of a recorded run (``[s1, B, P, d]``), shared by every mask."""
        self._add(0, s1, z[:s1], shared=True)

    def _add(self, s0: int, s1: int, z: torch.Tensor, shared: bool) -> None:
        self.groups.append((s0, s1, z, shared))
        if not self.buffered:
            return
        n, P, d = s1 - s0, z.shape[-2], z.shape[-1]
        K, B = self.K, self.B
        if self.buffer is None:
            self.buffer = torch.empty(K, self.tm.graph.n_senders, B * P * d, dtype=z.dtype, device=z.device)
        zc = self.corrupted[s0:s1].to(z.dtype)
        out = self.buffer[:, s0:s1].view(K, n, B, P, d)  # written in place: one pass, no temporaries
        if shared:
            out.copy_((z - zc)[None])  # one recorded run shared by the K masks: broadcast over K
        else:
            torch.sub(z.view(n, K, B, P, d).transpose(0, 1), zc[None], out=out)

    def _delta(self, gi: int) -> torch.Tensor:
        if gi not in self.deltas:
            s0, s1, z, shared = self.groups[gi]
            n, (Bp, P, d) = s1 - s0, z.shape[1:]
            zc = self.corrupted[s0:s1].to(z.dtype)
            self.deltas[gi] = z - zc if shared else z.reshape(n, self.K, self.B, P, d) - zc.unsqueeze(1)
        return self.deltas[gi]

    #: above this share of q/k/v receivers with a partly patched input, every receiver gets its
    #: own input (one batched matmul) instead of the shared-input split below
    MIXED_SHARE_DENSE = 0.6

    def split_qkv(self, layer: int, resid: torch.Tensor, r0: int, r1: int, n: int):
        """q, k, v (``[B', H, P, dh]``, k/v per query head, before rotary) of a patched layer, or
        None when the dense per-receiver path is as cheap.

        Per mask, a q/k/v receiver is *kept* (no incoming edge patched: it reads ``resid``),
        *removed* (every incoming edge patched with weight 1: it reads ``resid - Σ_s Δ_s``, the
        same for all such receivers), or *mixed*. Kept and removed receivers share two
        normalised inputs projected for all heads at once; only mixed receivers get their own
        input (``resid`` minus their weighted deltas), norm and projection. Circuits far from
        the full or the empty graph have few mixed receivers, so a patched layer costs little
        more than a plain one.
        """
        K, B, H = self.K, self.B, self.tm.graph.n_heads
        Wl = self.W[:, :n, r0:r1]  # [K, n, 3H]
        touched = Wl.ne(0).any(1)  # [K, 3H]
        if not bool(touched.any()):
            return None  # unpatched layer: the shared path (which also serves probes)
        removed = Wl.eq(1).all(1)
        mixed = touched & ~removed
        if float(mixed.float().mean()) > self.MIXED_SHARE_DENSE:
            return None
        a = self.tm.adapter
        norm = a.attn_norm(layer)
        Bp, P, d = resid.shape

        def shared(x: torch.Tensor):
            h = norm(x)
            return list(a.query_head_qkv(layer, h, h, h))

        out = shared(resid)  # [B', H, P, dh] each
        rows = lambda m: m.repeat_interleave(B, 0)[:, :, None, None]  # noqa: E731  [K, H] -> [B', H, 1, 1]
        cls = removed.view(K, H, 3)
        if bool(removed.any()):
            D = self.buffer[:, :n].sum(1)  # [K, B*P*d]: Σ_s Δ_s, what a fully patched receiver loses
            gone = shared((resid.reshape(K, -1) - D).view(Bp, P, d))
            out = [torch.where(rows(cls[:, :, c]), gone[c], out[c]) for c in range(3)]
        if bool(mixed.any()):
            for k in mixed.any(1).nonzero().flatten().tolist():  # masks, not edges
                rr = mixed[k].nonzero().flatten()  # this mask's mixed receivers (local index 3h + c)
                corr = Wl[k][:, rr].t() @ self.buffer[k, :n]  # [m, B*P*d]
                x = (resid[k * B:(k + 1) * B].reshape(1, -1) - corr).view(len(rr), B, P, d)
                y = a.project_heads(layer, norm(x), rr // 3, rr % 3)  # [m, B, P, dh]
                for c in range(3):
                    sel = rr % 3 == c
                    if bool(sel.any()):
                        out[c][k * B:(k + 1) * B, rr[sel] // 3] = y[sel].transpose(0, 1)
        return tuple(out)

    def receiver_input(
        self, resid: torch.Tensor, r0: int, r1: int, n_senders: int, shared_probe: bool = False
    ) -> torch.Tensor | None:
        """Inputs of receivers ``r0:r1`` ([r1-r0, B', P, d]), or None when they share ``resid``.

        With ``shared_probe`` the caller probes unpatched receivers itself (q/k/v hooks), so
        None is returned for them even when gradients are requested.
        """
        x = None
        if self.W is not None:
            Wl = self.W[:, :n_senders, r0:r1]  # [K, n, R_l]
            # zero weights change nothing -- unless the caller differentiates w.r.t. them
            if self.buffered and bool(Wl.any()):
                K, B = self.K, self.B
                Bp, P, d = resid.shape
                corr = torch.bmm(Wl.transpose(1, 2), self.buffer[:, :n_senders])  # [K, R_l, B*P*d]
                corr = corr.view(K, r1 - r0, B, P, d).transpose(0, 1)
                x = (resid.view(1, K, B, P, d) - corr).reshape(r1 - r0, Bp, P, d)
            elif Wl.requires_grad or bool(Wl.any()):
                K, B = self.K, self.B
                corr = None
                for gi, (s0, s1, _, shared) in enumerate(self.groups):
                    if s0 >= n_senders:
                        break
                    Wg = Wl[:, s0:s1]
                    if not Wg.requires_grad and not bool(Wg.any()):
                        continue
                    eq = "ksr,sbpd->rkbpd" if shared else "ksr,skbpd->rkbpd"
                    term = torch.einsum(eq, Wg, self._delta(gi))
                    corr = term if corr is None else corr + term
                Bp, P, d = resid.shape
                x = resid.view(1, K, B, P, d) - corr
                x = x.reshape(r1 - r0, Bp, P, d)
        if self.on_grad is not None and resid.requires_grad and not (x is None and shared_probe):
            if x is None:  # a view of its own, so its gradient is this receiver's share only
                x = resid[None].expand(r1 - r0, *resid.shape)
            cb, n, idx = self.on_grad, n_senders, torch.arange(r0, r1, device=resid.device)
            x.register_hook(lambda grad: cb(idx, n, grad))
        return x

    def probe_shared_qkv(self, layer: int, norm, resid: torch.Tensor, qkv, r0: int, n_senders: int) -> None:
        """Report each head's q/k/v input gradient on the shared path.

        ``grad_in = VJP_norm(resid)(grad_qkv_h @ W_h^T)``: the per-head projection's backward
        followed by the norm's vector-Jacobian product, vmapped over heads.
        """
        from torch.func import vjp, vmap

        _, norm_vjp = vjp(norm, resid.detach())
        batched_vjp = vmap(norm_vjp)
        w = self.tm.adapter.attn_weights(layer)
        H = qkv[0].shape[1]
        dev = resid.device
        # The hooks must not reference this _State: it holds the run's activations, and a
        # cycle through an autograd node is never collected (it leaked every pass's
        # activations until the caller's job ended).
        cb = self.on_grad
        for c, (t, W) in enumerate(zip(qkv, (w.W_Q, w.W_K, w.W_V))):
            idx = r0 + 3 * torch.arange(H, device=dev) + c

            def hook(grad: torch.Tensor, W=W, idx=idx) -> None:
                g_in = _head_input_grad(grad, W.detach())  # [H, B', P, d], post-norm
                cb(idx, n_senders, batched_vjp(g_in)[0])

            t.register_hook(hook)

    def recorded(self) -> torch.Tensor:
        return torch.cat([z.detach().repeat(1, self.K, 1, 1) if shared else z.detach() for _, _, z, shared in self.groups], dim=0)


def _head_input_grad(grad: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
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
