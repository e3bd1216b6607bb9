"""Receiver inputs of post-norm families (Gemma-2/3, OLMo-2), where head outputs are not additive.

In these models a layer's attention adds ``post_norm_l(Σ_h z_h + b_O)`` to the residual, so the
residual-sum identity ``in_v = resid - Σ_s w_sv Δ_s`` does not hold for head senders. A receiver
``v`` reads instead (docs/concepts.md, "Post-norm families")::

    in_v = Σ_{s non-attention} mix_sv  +  Σ_{l < v} post_norm_l( Σ_h mix_{hv} + b_O )
    mix_sv = z_s - w_sv (z_s - z_s^ref)

(``w = 1 - keep``; ``z_h`` a head's output *before* the norm, ``W_O`` applied). Written against
the live residual, with ``pre_l = Σ_h z_h + b_O``::

    in_v = resid - Σ_{s non-attn} w_sv Δ_s - Σ_l [ post_l(pre_l) - post_l(pre_l - Σ_h w_hv Δ_h) ]

Per earlier attention layer, receivers with the same weights on that layer's heads (every
receiver keeping them all, every one removing them all, a uniform fractional weight) share one
normalised sum: the weight columns are deduplicated (``torch.unique``) before any norm runs, and a
layer no receiver patches costs nothing. Only receivers with their own mix of that layer's edges
get their own norm. When the weights require grad (learned masks, the EAP definition test),
every receiver gets its own (autograd then reaches each weight).

Gradient probes: the natural attribution of an edge from head ``h`` of layer ``l`` into ``v`` is
the gradient with respect to ``v``'s copy of that layer's *pre-norm* sum,
``g_{v,l} = J_{post_l}(pre_{v,l})^T ∂L/∂in_v``, so that ``Δ_h · g_{v,l} = ∂L/∂w_hv`` (EAP's
first-order term). The probe reports ``∂L/∂in_v`` for the non-attention senders and, per earlier
attention layer, ``g_{v,l}`` through the norm's vector-Jacobian product at the pre-norm sum that
receiver read (one VJP shared by every receiver when they all read the live sum).

Shapes: K masks, B examples, B' = K·B, P positions, d width, H heads, R receivers of one group,
U distinct weight columns; ``[K|1, ...]``: per mask, or one tensor shared by every mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from .block import ReceiverNorm

ProbeFn = Callable[[torch.Tensor, slice, torch.Tensor], None]
"""``(receivers, senders, grad)``: the gradient ``grad`` [R, B', P, d] that senders ``senders`` pair with."""


@dataclass(frozen=True)
class AttnLayer:
    """One attention layer as later receivers read it.

    ``senders``: its heads' sender range; ``pre``: ``[K|1, B, P, d]`` the live ``Σ_h z_h + b_O``;
    ``delta``: ``[H, K|1, B, P, d]`` ``z_h - z_h^ref`` (None when nothing is patched); ``norm``: the
    post-attention norm; ``rms``: that norm as a :class:`ReceiverNorm` when it is an RMSNorm (then patched sums
    are normalised in place).
    """

    senders: slice
    pre: torch.Tensor
    delta: torch.Tensor | None
    norm: nn.Module
    rms: ReceiverNorm | None = None

    @cached_property
    def post(self) -> torch.Tensor:
        """``norm(pre)``, the live sum normalised: computed once for every receiver group that reads the layer."""
        return self.norm(self.pre)


def _zero(w: torch.Tensor | None) -> bool:
    """No weight and no gradient: the receivers read the live values."""
    return w is None or (not w.requires_grad and not bool(w.any()))


def layer_term(layer: AttnLayer, Wl: torch.Tensor | None, K: int, R: int
               ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """What receivers lose from one earlier attention layer, and the pre-norm sums they read.

    ``Wl``: ``[K, H, R]`` weights of the corrupted value on the layer's heads (None: unpatched).
    Returns ``(term, primals, inv)``: ``term`` ``[R, K, B, P, d]`` = ``post(pre) - post(pre_v)`` (None if
    every receiver reads the live sum), ``primals`` ``[U, K|1, B, P, d]`` the distinct pre-norm sums
    and ``inv`` ``[R]`` which one each receiver read.
    """
    pre = layer.pre
    if _zero(Wl):
        return None, pre[None], torch.zeros(R, dtype=torch.long, device=pre.device)
    H = Wl.shape[1]
    if Wl.requires_grad:  # every receiver its own weights: autograd reaches each of them
        Wu, inv = Wl.permute(2, 0, 1), torch.arange(R, device=Wl.device)
    else:
        uniq, inv = torch.unique(Wl.permute(2, 0, 1).reshape(R, K * H), dim=0, return_inverse=True)
        Wu = uniq.view(-1, K, H)  # [U, K, H]
    delta = layer.delta.expand(H, K, *layer.delta.shape[2:])
    primals = pre[None] - torch.einsum("ukh,hkbpd->ukbpd", Wu.to(delta.dtype), delta)  # [U, K, B, P, d]
    if Wl.requires_grad:
        term_u = layer.post[None] - layer.norm(primals)
    else:  # a column that keeps every edge loses exactly nothing: only the others are normalised
        patched = ~Wu.eq(0).flatten(1).all(1)  # [U]
        term_u = torch.zeros_like(primals)
        term_u[patched] = layer.post[None] - layer.norm(primals[patched])
    return term_u[inv], primals, inv


def post_norm_input(resid: torch.Tensor, W: torch.Tensor | None, nonattn_delta: torch.Tensor | None,
                    layers: list[AttnLayer], K: int, n_senders: int, stride: int,
                    probe: tuple[ProbeFn, torch.Tensor] | None, R: int) -> torch.Tensor | None:
    """Inputs ``[R, B', P, d]`` of one receiver group, or None when they all read ``resid`` unchanged.

    ``W``: ``[K, n_senders, R]`` (None: unpatched); ``nonattn_delta``: ``[n_na, K|1, B, P, d]`` deltas of
    the non-attention senders ``0, stride, 2·stride, ...`` below ``n_senders`` (input, MLPs);
    ``layers``: every attention layer the receivers read; ``probe``: ``(callback, receiver indices)``;
    ``R``: how many receivers the group has.
    """
    Bp, P, d = resid.shape
    B = Bp // K
    if W is not None and not torch.is_grad_enabled():
        return _input_without_grad(resid, W, nonattn_delta, layers, K, n_senders, stride)
    corr = None
    if W is not None:
        Wna = W[:, 0:n_senders:stride]  # [K, n_na, R]
        if not _zero(Wna):
            dn = nonattn_delta.expand(nonattn_delta.shape[0], K, *nonattn_delta.shape[2:])
            corr = torch.einsum("ksr,skbpd->rkbpd", Wna.to(dn.dtype), dn)
    primals = []
    for layer in layers:
        Wl = None if W is None else W[:, layer.senders]
        term, prim, inv = layer_term(layer, Wl, K, R)
        primals.append((layer, prim, inv))
        if term is not None:
            corr = term if corr is None else corr + term
    x = None if corr is None else (resid.view(1, K, B, P, d) - corr).reshape(R, Bp, P, d)
    if probe is not None and resid.requires_grad:
        if x is None:  # a view of its own, so its gradient is this receiver group's share only
            x = resid[None].expand(R, *resid.shape)
        _register_probe(x, probe, slice(0, n_senders, stride), primals, K)
    return x


def _input_without_grad(resid: torch.Tensor, W: torch.Tensor, nonattn_delta: torch.Tensor | None,
                        layers: list[AttnLayer], K: int, n_senders: int, stride: int) -> torch.Tensor | None:
    """:func:`post_norm_input` without autograd: the same inputs, built in one ``[R, K, B, P, d]`` tensor
    that each layer's term is subtracted from in place (each temporary of that size is fresh memory the
    allocator faults in, so the general path's dozen per layer, not its arithmetic, set its cost)."""
    Bp, P, d = resid.shape
    B, R = Bp // K, W.shape[2]
    x = scratch = None
    Wna = W[:, 0:n_senders:stride]  # [K, n_na, R]
    if bool(Wna.any()):
        dn = nonattn_delta.expand(nonattn_delta.shape[0], K, *nonattn_delta.shape[2:])
        x = torch.einsum("ksr,skbpd->rkbpd", Wna.to(dn.dtype), dn).neg_().add_(resid.view(1, K, B, P, d))
    for layer in layers:
        Wl = W[:, layer.senders]  # [K, H, R]
        if not bool(Wl.any()):
            continue
        uniq, inv = torch.unique(Wl.permute(2, 0, 1).reshape(R, -1), dim=0, return_inverse=True)
        Wu = uniq.view(-1, *Wl.shape[:2])  # [U, K, H]
        patched = Wu.flatten(1).any(1)  # [U]: the distinct weights that remove something
        rows = torch.cumsum(patched, 0).sub_(1).masked_fill_(~patched, -1)[inv]  # [R]: term row, or -1
        delta = layer.delta.expand(Wl.shape[1], K, *layer.delta.shape[2:])
        pre = layer.pre  # [K|1, B, P, d]
        Wp = Wu[patched].to(delta.dtype)  # [U', K, H]
        # pre_v = pre - Σ_h w_hv Δ_h, one pass per mask, into memory reused across layers ([K, U', B, P, d])
        if scratch is None:
            scratch = resid.new_empty(R * K * B * P * d)
        prim = scratch[:K * len(Wp) * B * P * d].view(K, len(Wp), B, P, d)
        for k in range(K):  # masks, not edges
            torch.addmm(pre[k if len(pre) > 1 else 0].reshape(1, -1), Wp[:, k], delta[:, k].reshape(len(delta), -1),
                        alpha=-1, out=prim[k].view(len(Wp), -1))
        prim = prim.transpose(0, 1)  # [U', K, B, P, d]
        # the receivers lose post(pre) - post(pre_v): add post(pre_v) - post(pre) to them, [U', K, B, P, d]
        term = (layer.norm(prim) if layer.rms is None else layer.rms.normalise_(prim)).sub_(layer.post)
        if x is None:
            x = resid.view(1, K, B, P, d).expand(R, K, B, P, d).clone()
        recv = (rows >= 0).nonzero().flatten()
        if len(recv) == len(term):  # every distinct patched sum read by one receiver: no gathered copy
            order = torch.empty_like(recv)
            order[rows[recv]] = recv
            x.index_add_(0, order, term)
        else:
            x.index_add_(0, recv, term[rows[recv]])
    return None if x is None else x.reshape(R, Bp, P, d)


def _register_probe(x: torch.Tensor, probe: tuple[ProbeFn, torch.Tensor], nonattn: slice,
                    primals: list[tuple[AttnLayer, torch.Tensor, torch.Tensor]], K: int) -> None:
    """Backward hook on the inputs ``x``: report ``∂L/∂in_v`` for the non-attention senders and the
    pre-norm gradient ``J_post(pre_v)^T ∂L/∂in_v`` for each attention layer's heads.

    The hook holds detached primals, the norms and the callback only (never the run's state).
    """
    cb, idx = probe
    kept = [(layer.senders, layer.norm, _flat(prim.detach(), K), inv) for layer, prim, inv in primals]

    def hook(grad: torch.Tensor) -> None:
        from torch.func import vjp, vmap

        cb(idx, nonattn, grad)
        for senders, norm, prim, inv in kept:
            if prim.shape[0] == 1:  # every receiver read the same sum: one VJP, vmapped over receivers
                _, f = vjp(norm, prim[0])
                g = vmap(f)(grad)[0]
            else:
                g = vmap(lambda p, gg, norm=norm: vjp(norm, p)[1](gg)[0])(prim[inv], grad)
            cb(idx, senders, g)

    x.register_hook(hook)


def _flat(prim: torch.Tensor, K: int) -> torch.Tensor:
    """``[U, K|1, B, P, d]`` -> ``[U, K·B, P, d]`` (mask-major rows, as the run's batch)."""
    U, _, B, P, d = prim.shape
    return prim.expand(U, K, B, P, d).reshape(U, K * B, P, d)
