"""One transformer block in residual-stream form: the only place attention + MLP are composed.

The block reads like the architecture (nanoGPT's ``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))``),
except that every *read of the residual stream* goes through a :class:`BlockIO`, which may
hand a receiver its own (patched or probed) input, and every *write* (head outputs, MLP
output) goes through it too, so that runs can record, replace or patch them::

    q, k, v = io.qkv(block, x, at)          # receivers a{l}.h{h}<q|k|v>
    z = io.heads(layer, attention(q, k, v)) # senders a{l}.h{h}: [H, B', P, d]
    x = x + post_attn_norm(Σ_h z_h + b_O)    # post-norm families (Gemma-2/3, OLMo-2); else no norm
    m = io.mlp(layer, mlp(io.mlp_input(layer, x)))   # receiver and sender m{l} (post-ff norm inside)
    x = x + m                                # (parallel blocks: both read the same x)

The full traced run, the answer-position tail of the last layer and the exact single-edge
recomputation all use :class:`Block`. Shapes: B' rows (masks x examples), P positions,
d model width, H query heads, dh head width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from ..graph import GraphLayout
from ..models.base import Adapter, NormFold

Rotary = Any
"""What :meth:`Adapter.rotary` returns: ``(cos, sin)`` each ``[B', P, rot_dim]``, one such pair per layer
type (Gemma-3; :meth:`Adapter.layer_rotary` picks a layer's), or None for models without rotary."""


class BlockIO(Protocol):
    """How a block reads its receivers and writes its senders (see :class:`~circuits.runtime.state.RunState`)."""

    def qkv(self, block: Block, x: torch.Tensor, at: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v ``[B', H, Pq, dh]`` (before rotary; k/v per query head) from the residual ``x`` [B', P, d]."""

    def heads(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """The heads' outputs ``[H, B', P, d]`` as the rest of the run sees them."""

    def mlp_input(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The MLP receiver's input, given the residual ``x`` it would read unpatched."""

    def mlp(self, layer: int, m: torch.Tensor) -> torch.Tensor:
        """The MLP's output ``[B', P, d]`` as the rest of the run sees it."""


class PlainIO:
    """A block that reads and writes the residual stream unchanged (a plain forward)."""

    def qkv(self, block: Block, x: torch.Tensor, at: torch.Tensor | None):
        h = block.attn_norm(x)
        return block.project(h if at is None else block.rows_at(h, at), h, h)

    def heads(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        return z

    def mlp_input(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return x

    def mlp(self, layer: int, m: torch.Tensor) -> torch.Tensor:
        return m


class Block:
    """Layer ``layer`` of an adapted model: normalisations, projections, attention, MLP."""

    def __init__(self, adapter: Adapter, layer: int) -> None:
        self.adapter, self.layer = adapter, layer
        self.parallel = adapter.parallel_attn_mlp
        self.attn_norm = adapter.attn_norm(layer)
        # many receivers' own inputs
        self.receiver_norm = receiver_norm(self.attn_norm, adapter.rms_norm, adapter.rms_weight_offset)
        self.post_attn_norm = adapter.post_attn_norm(layer)
        self.post_mlp_norm = adapter.post_mlp_norm(layer)

    # ------------------------------------------------------------------ the block
    def forward(self, x: torch.Tensor, io: BlockIO, rot: Rotary, mask: torch.Tensor,
                at: torch.Tensor | None = None) -> torch.Tensor:
        """Residual after this layer: ``x`` [B', P, d] -> [B', P, d].

        With ``at`` ([B'] positions), queries, head outputs and the MLP run at those positions
        only (keys and values still see every position) and the result is ``[B', 1, d]``: the
        last layer when only the answer logits count.
        """
        q, k, v = io.qkv(self, x, at)
        z, b_O = self.attention(q, k, v, rot, mask, at)  # [H, B', Pq, d]
        z = io.heads(self.layer, z)
        attn_out = self.attn_output(z.sum(0) if b_O is None else z.sum(0) + b_O)
        return self.finish(x if at is None else self.rows_at(x, at), attn_out, io)

    def finish(self, x: torch.Tensor, attn_out: torch.Tensor, io: BlockIO) -> torch.Tensor:
        """The rest of the block once the attention's output is known: add it and the MLP's."""
        if self.parallel:  # the MLP reads the same residual as the attention
            m = io.mlp(self.layer, self.mlp(io.mlp_input(self.layer, x)))
            return x + attn_out + m
        x = x + attn_out
        m = io.mlp(self.layer, self.mlp(io.mlp_input(self.layer, x)))
        return x + m

    # ------------------------------------------------------------------ pieces
    def attn_output(self, pre: torch.Tensor) -> torch.Tensor:
        """What the attention adds to the residual, from its summed head outputs + b_O ``pre`` [..., P, d]."""
        return pre if self.post_attn_norm is None else self.post_attn_norm(pre)

    def project(self, hq: torch.Tensor, hk: torch.Tensor, hv: torch.Tensor):
        """Normalised inputs -> q, k, v ``[B', H, P, dh]`` (k/v repeated to the query heads)."""
        return self.adapter.query_head_qkv(self.layer, hq, hk, hv)

    def project_own(self, x: torch.Tensor, layout: GraphLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v ``[B', H, P, dh]`` (k/v per query head) when each of the layer's 3H receivers reads its own
        input: the first 3H rows of ``x`` [R >= 3H, B', P, d] (receiver order of ``layout``: head-major, q/k/v
        interleaved; rows after them are normalised along when that saves a copy, and not projected). Where
        the norm folds (:class:`ReceiverNorm`), the projections normalise and no normalised input is written."""
        R = 3 * layout.n_heads
        fold = self._fold(x[:R])
        if fold is None:
            h = layout.per_head_qkv(in_memory_order(self.receiver_norm, x)[:R])  # [H, 3, B', P, d]
            return self.adapter.project_qkv(self.layer, h[:, 0], h[:, 1], h[:, 2])
        xs = layout.per_head_qkv(x[:R])  # [H, 3, B', P, d]
        scale = layout.per_head_qkv(fold.scale)
        folds = tuple(NormFold(fold.weight, scale[:, c]) for c in range(3))
        return self.adapter.project_qkv(self.layer, xs[:, 0], xs[:, 1], xs[:, 2], folds)

    def project_rows(self, x: torch.Tensor, heads: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Row ``m`` of the receiver inputs ``x`` [m, B', P, d] normalised and projected through head
        ``heads[m]``'s q, k or v weights (``slots[m]``) -> ``[m, B', P, dh]`` (no rotary)."""
        fold = self._fold(x)
        if fold is None:
            return self.adapter.project_heads(self.layer, in_memory_order(self.receiver_norm, x), heads, slots)
        return self.adapter.project_heads(self.layer, x, heads, slots, fold)

    def _fold(self, x: torch.Tensor) -> NormFold | None:
        """The attention norm of ``x`` as a fold for the projections, or None (see :class:`ReceiverNorm`)."""
        if not isinstance(self.receiver_norm, ReceiverNorm) or not self.adapter.folds_input_norm:
            return None
        return self.receiver_norm.fold(x)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rot: Rotary, mask: torch.Tensor,
                  at: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rotary, attention and ``W_O``: per-head outputs ``[H, B', Pq, d]`` and the output bias (or None)."""
        a = self.adapter
        q_pos = None
        if at is not None:
            q_pos = at[:, None]
            mask = mask[torch.arange(mask.shape[0], device=mask.device), :, at][:, :, None]  # [B', 1, 1, P]
        rot = a.layer_rotary(rot, self.layer)
        if rot is not None:
            cos, sin = rot
            qc, qs = (cos, sin) if at is None else (self.rows_at(cos, at), self.rows_at(sin, at))
            q, k = a.rotate(q, qc, qs), a.rotate(k, cos, sin)
        ctx = a.attend(self.layer, q, k, v, mask, q_pos=q_pos)
        return a.head_outputs(self.layer, ctx)

    def project_tail(self, xq: torch.Tensor, xkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`project_own` for the answer-position tail: the queries' own inputs ``xq`` [H, B', 1, d] and the
        keys' and values' ``xkv`` [2H, B', P, d] (head-major, k then v) -> q ``[B', H, 1, dh]``, k, v
        ``[B', H, P, dh]`` (k/v per query head)."""
        H = xq.shape[0]
        fq, fkv = self._fold(xq), self._fold(xkv)
        if fq is None or fkv is None:
            hkv = in_memory_order(self.receiver_norm, xkv).view(H, 2, *xkv.shape[1:])
            return self.adapter.project_qkv(self.layer, self.receiver_norm(xq), hkv[:, 0], hkv[:, 1])
        kv, scale = xkv.view(H, 2, *xkv.shape[1:]), fkv.scale.view(H, 2, *fkv.scale.shape[1:])
        folds = (fq, NormFold(fkv.weight, scale[:, 0]), NormFold(fkv.weight, scale[:, 1]))
        return self.adapter.project_qkv(self.layer, xq, kv[:, 0], kv[:, 1], folds)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """Normalisation and MLP (output bias included; post-feed-forward norm where the model has one)
        of the receiver input ``x``: the sender ``m{l}``'s output."""
        a = self.adapter
        m = a.run_mlp(self.layer, a.mlp_norm(self.layer)(x))
        return m if self.post_mlp_norm is None else self.post_mlp_norm(m)

    @staticmethod
    def rows_at(t: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """``t[b, at[b]]`` for every row, keeping a position axis of 1: ``[B', P, ...]`` -> ``[B', 1, ...]``."""
        return t[torch.arange(t.shape[0], device=t.device), at][:, None]


def in_memory_order(norm: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``norm`` (acting along the last dim) of receiver inputs ``x`` [R, B', P, d] in their memory order:
    the buffered inputs are a view of ``[B', P, R, d]`` and are normalised as that (a LayerNorm would
    first copy a strided input); the result is viewed back as ``[R, B', P, d]``."""
    t = x.permute(1, 2, 0, 3)
    if x.is_contiguous() or not t.is_contiguous():
        return norm(x)
    return norm(t).permute(2, 0, 1, 3)


def receiver_norm(norm: nn.Module, rms: bool, offset: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The attention norm as applied to many receivers' own inputs (``[..., d]``; rows are independent):
    :func:`receiver_rms`'s :class:`ReceiverNorm` where there is one, else the module itself."""
    return receiver_rms(norm, rms, offset) or norm


def receiver_rms(norm: nn.Module | None, rms: bool, offset: float = 0.0) -> ReceiverNorm | None:
    """``norm`` as a :class:`ReceiverNorm` when it is an RMSNorm (``rms``, :attr:`Adapter.rms_norm`, and a module
    holding ``weight`` and ``variance_epsilon`` or ``eps``; gain ``weight + offset``,
    :attr:`Adapter.rms_weight_offset`), else None."""
    eps, weight = getattr(norm, "variance_epsilon", getattr(norm, "eps", None)), getattr(norm, "weight", None)
    return ReceiverNorm(norm, weight, eps, offset) if rms and isinstance(eps, float) and weight is not None else None


class ReceiverNorm:
    """An RMSNorm ``x * rsqrt(|x|²/d + eps) * gain`` (Llama's: gain = weight; Gemma's: 1 + weight) for many
    receivers' float32 inputs.

    Called, it normalises in three passes over ``x`` (one reduction, two products) instead of the
    module's five; through :meth:`fold` it costs one pass (the reduction) and the projection that
    follows applies the rest. Anything else (and anything under autograd) goes through the module
    itself. Results equal the module's up to float rounding.
    """

    def __init__(self, norm: nn.Module, weight: torch.Tensor, eps: float, offset: float = 0.0) -> None:
        self.norm, self.weight, self.eps, self.offset = norm, weight, eps, offset

    @property
    def gain(self) -> torch.Tensor:
        """``weight + offset``, from the module's current weight."""
        return self.weight if self.offset == 0.0 else self.weight + self.offset

    def applies(self, x: torch.Tensor) -> bool:
        """Whether ``x`` takes the fast path (float32 input and weight, no autograd)."""
        return x.dtype == torch.float32 and self.weight.dtype == torch.float32 and not torch.is_grad_enabled()

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """``rsqrt(|x|²/d + eps)`` per row: ``[..., d]`` -> ``[..., 1]``."""
        return torch.rsqrt(torch.linalg.vector_norm(x, dim=-1, keepdim=True).square() / x.shape[-1] + self.eps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.applies(x):
            return self.norm(x)
        return torch.mul(x, self.scale(x)).mul_(self.gain)

    def normalise_(self, x: torch.Tensor) -> torch.Tensor:
        """The norm of ``x``, written into ``x`` on the fast path (the caller owns ``x``; otherwise the module's
        result, a new tensor)."""
        if not self.applies(x):
            return self.norm(x)
        return x.mul_(self.scale(x)).mul_(self.gain)

    def fold(self, x: torch.Tensor) -> NormFold | None:
        """The norm of ``x`` [..., d] as a :class:`~circuits.models.base.NormFold` for its projection, or
        None off the fast path."""
        return NormFold(self.gain, self.scale(x)) if self.applies(x) else None
