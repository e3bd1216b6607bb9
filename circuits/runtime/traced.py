"""Traced forward: the model run in residual-stream form, with edge patching and gradient probes.

One mechanism serves every method:

* **record** the outputs of every sender (``input``, each head, each MLP) as ``[S, B, P, d]``;
* **patch** edges (:class:`Patch`): with keep-masks ``[E]`` or ``[K, E]``, receiver ``v`` reads
  ``resid_v - Σ_s (1 - keep_sv) (z_s - z_s^ref)`` -- the residual-sum identity, one batched
  matmul per receiver group, never a loop over edges;
* **probe** receivers (:class:`Probe`): a callback gets ``∂loss/∂in_v`` for each receiver
  group during backward; a sender hook may replace sender outputs (interpolations, leaves).

Each layer is one :class:`~circuits.runtime.block.Block`; a :class:`~circuits.runtime.state.RunState`
is its reader/writer. Shapes: B examples, P positions, d model width, K masks; with K masks
the batch dimension of every activation is ``K * B`` (mask-major).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..graph import GraphLayout, KeepMask, layout_for
from ..models import Adapter, get_adapter
from ..parallel import fingerprint
from .block import Block, PlainIO
from .masks import causal_mask, default_position_ids
from .state import GradCallback, RunState, SenderHook
from .workspace import Workspace


@dataclass(frozen=True)
class Patch:
    """What removed edges read, and which edges are removed.

    ``keep``: keep-mask ``[E]`` or ``[K, E]`` (1 = kept; K masks are evaluated together and the
    output batch is ``K * B``; fractional values interpolate and may require grad).
    ``reference``: ``[S, Bc, Pc, d]`` sender outputs removed edges read (the corrupted run's, or
    ``Bc = Pc = 1`` for a broadcast mean / zero ablation).
    """

    keep: KeepMask
    reference: torch.Tensor


@dataclass(frozen=True)
class Probe:
    """Gradient probes: ``on_grad`` gets each receiver group's input gradient during backward.

    ``sender_hook`` may replace sender outputs (a returned grad-requiring leaf is listed in
    :attr:`RunOutput.leaves`); ``input_requires_grad`` makes the embedding a leaf so a backward
    pass reaches every receiver without touching parameter grads.
    """

    on_grad: GradCallback | None = None
    sender_hook: SenderHook | None = None
    input_requires_grad: bool = False


@dataclass(frozen=True)
class Prefix:
    """A run's state at the start of layer ``layer``, from which masked runs can resume.

    ``resid``: ``[B, P, d]`` residual entering the layer; ``senders``: ``[S, B, P, d]`` live sender
    outputs of that run (only those before ``layer`` are read). Masks given with a prefix must
    not differ from that run's mask on edges into layers before ``layer``.
    """

    layer: int
    resid: torch.Tensor
    senders: torch.Tensor


@dataclass
class RunOutput:
    """Result of :meth:`TracedModel.run`.

    ``logits``: ``[B', P, V]`` (``[B', 1, V]`` with ``logit_positions``; ``B' = K*B`` with K masks);
    ``senders``: ``[S, B', P, d]`` sender outputs when recorded (detached); ``resid``: the residual
    at the start of every layer, then the final one, when recorded.
    """

    logits: torch.Tensor
    senders: torch.Tensor | None = None
    leaves: list[torch.Tensor] = field(default_factory=list)  # grad-requiring leaves (for autograd.grad)
    resid: list[torch.Tensor] | None = None


class TracedModel(nn.Module):
    """A `transformers` causal LM with every sender output and receiver input addressable.

    >>> tm = TracedModel(model)
    >>> corr = tm.run(corrupted_ids, attention_mask, record=True)
    >>> patched = tm.run(ids, attention_mask, patch=Patch(keep=circuit_mask, reference=corr.senders))
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.adapter: Adapter = get_adapter(model)
        a = self.adapter
        self.layout: GraphLayout = layout_for(a.n_layers, a.n_heads, a.parallel_attn_mlp)
        self.blocks = [Block(a, layer) for layer in range(a.n_layers)]
        self.workspace: Workspace | None = None  # the active one, set by reusing_buffers
        self._kept: Workspace | None = None  # the last block's scratch, held for the next block

    @contextmanager
    def reusing_buffers(self, workspace: Workspace | None = None) -> Iterator[None]:
        """Within the block, masked runs share their large scratch tensors (the delta buffer, a layer's
        receiver inputs, the sparse forward's store: :mod:`~circuits.runtime.workspace`) instead of
        allocating them each run. For loops over masks; the runs must be sequential (one run's buffer is the
        next one's).

        On leaving the outermost block its scratch is kept for the next block (a runner's next evaluation then
        takes no fresh pages from the operating system) until a run outside any block that records, probes or
        has gradients (a recording, an attribution or training pass) or :meth:`release_buffers` lets it go: the
        model holds at most one loop's scratch, and never while such work runs. A block lets go of the kept
        blocks it does not ask for before it allocates anything and when it ends (:meth:`Workspace.begin`).
        A caller's own ``workspace`` is used instead and stays the caller's. A masked :meth:`run` without
        gradients, probes or recording is a block of one run by itself (for the CPU, what the CUDA caching
        allocator does for freed blocks)."""
        if self.workspace is not None:
            yield
            return
        self.workspace = workspace or self._kept or Workspace()
        self._kept = None
        if workspace is None:
            self.workspace.begin()  # what the last loop held but this one does not use is let go
        try:
            yield
        finally:
            if workspace is None:
                self.workspace.end()
                self._kept = self.workspace
            self.workspace = None

    def release_buffers(self) -> None:
        """Let go of the scratch the last :meth:`reusing_buffers` block kept (see there)."""
        self._kept = None

    @property
    def held_bytes(self) -> int:
        """Bytes of scratch kept from the last :meth:`reusing_buffers` block (0 once let go)."""
        return 0 if self._kept is None else self._kept.nbytes()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def fingerprint(self) -> str:
        """What processes compare to know they hold the same model: config, parameter count and the
        input embedding's sum (6 significant digits, so devices that sum in another order agree)."""
        emb = self.model.get_input_embeddings().weight
        n_params = sum(p.numel() for p in self.model.parameters())
        config = fingerprint(self.model.config.to_json_string(use_diff=False))
        return f"{self.model.config.model_type}/{n_params} parameters/embedding sum {float(emb.detach().double().sum()):.6g}/{config}"

    def run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        patch: Patch | None = None,
        probe: Probe | None = None,
        record: bool = False,
        record_resid: bool = False,
        logit_positions: torch.Tensor | None = None,
        logit_columns: torch.Tensor | None = None,
        resume: Prefix | None = None,
    ) -> RunOutput:
        """Run the model; optionally patch edges, probe receivers, record senders / residuals.

        Args:
            input_ids: ``[B, P]`` token ids; ``attention_mask``: ``[B, P]`` 1 = real token (left
                padding supported); ``position_ids``: ``[B, P]``, default counts real tokens.
            patch: edges to remove and what they read (:class:`Patch`).
            probe: gradient probes and sender hooks (:class:`Probe`).
            record: return all sender outputs (detached) as ``RunOutput.senders``.
            record_resid: return the residual at the start of every layer (``RunOutput.resid``).
            logit_positions: ``[B]`` positions; logits are computed only there (``[B', 1, V]``),
                and when nothing is patched, probed or recorded the last layer runs its queries
                and MLP only there.
            logit_columns: ``[C]`` token ids; only those logits are computed (``[..., C]``).
            resume: start at ``resume.layer`` from a recorded run instead of the embedding
                (its senders are shared by all K masks).
        """
        B, P = self._check_inputs(input_ids, attention_mask, patch)
        if self.workspace is None:
            if probe is not None or record or record_resid or torch.is_grad_enabled():
                self.release_buffers()  # work with a large peak of its own: the kept scratch must not add to it
            elif patch is not None:  # a masked run whose outputs (logits alone) share no memory with its scratch
                with self.reusing_buffers():
                    return self.run(input_ids, attention_mask, position_ids, patch=patch, logit_positions=logit_positions,
                                    logit_columns=logit_columns, resume=resume)
        dev = input_ids.device
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, B, P, dev)
        W = None if patch is None else self.layout.patch_weights(patch.keep, dev, self.dtype)
        K = 1 if W is None else W.shape[0]
        probe = probe or Probe()
        state = RunState(self.layout, self.adapter, W, None if patch is None else patch.reference, K, B,
                         probe.on_grad, probe.sender_hook, self.workspace, keep_outputs=record)
        mask = per_mask(causal_mask(attention_mask, B, P, dev), K)  # [B', 1, P, P]
        resid, start = self._start(input_ids, position_ids, state, K, probe.input_requires_grad, resume)
        rot = self.adapter.rotary(resid, per_mask(position_ids, K))
        quiet = probe == Probe() and not record and not record_resid
        plain = W is None and quiet
        # Only the answer positions' logits wanted and nothing to probe or record (nor to patch, or patched
        # through the delta buffer): the last layer need only run its queries, heads and MLP there (keys and
        # values still see every position).
        tail = (plain or (quiet and state.buffered)) and logit_positions is not None and start < self.layout.n_layers
        at = per_mask(logit_positions.to(dev).long(), K) if logit_positions is not None else None
        io = PlainIO() if plain else state
        resids = [] if record_resid else None
        for layer in range(start, self.layout.n_layers):
            if resids is not None:
                resids.append(resid)
            last = layer == self.layout.n_layers - 1
            resid = self.blocks[layer].forward(resid, io, rot, mask, at if (tail and last) else None)
        if resids is not None:
            resids.append(resid)
        final = state.logits_input(resid, at, tail)  # [B', 1, d] with logit_positions
        logits = self.adapter.unembed(final, logit_columns)
        return RunOutput(logits, state.recorded() if record else None, state.leaves, resids)

    def _check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, patch: Patch | None
                      ) -> tuple[int, int]:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, positions], got shape {tuple(input_ids.shape)}")
        B, P = input_ids.shape
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
        if patch is not None:
            ref, S = patch.reference, self.layout.n_senders
            if ref.dim() != 4 or ref.shape[0] != S or ref.shape[2] not in (1, P) or ref.shape[1] not in (1, B):
                raise ValueError(
                    f"the reference sender outputs must be [S={S}, B={B} (or 1), P={P} (or 1), d]; got {tuple(ref.shape)}. "
                    "Clean and corrupted batches must have the same shape."
                )
        return B, P

    def _start(self, input_ids: torch.Tensor, position_ids: torch.Tensor, state: RunState, K: int,
               input_requires_grad: bool, resume: Prefix | None) -> tuple[torch.Tensor, int]:
        """The residual ``[B', P, d]`` the first computed layer reads, and that layer."""
        if resume is not None:
            state.add_prefix(self.layout.senders_before_attn(resume.layer), resume.senders)
            return per_mask(resume.resid, K), resume.layer
        x0 = per_mask(self.adapter.embed(input_ids, position_ids), K)  # [B', P, d]
        if input_requires_grad:
            x0 = x0.detach().requires_grad_(True)
            state.leaves.append(x0)
        return state.emit(0, 1, x0[None])[0], 0


def per_mask(t: torch.Tensor, K: int) -> torch.Tensor:
    """``t`` (batch first) stacked for K masks, mask-major: ``[B, ...]`` -> ``[K*B, ...]`` (no copy for one mask)."""
    return t if K == 1 else t.repeat(K, *([1] * (t.dim() - 1)))


def as_traced(model: nn.Module | TracedModel) -> TracedModel:
    """Wrap a `transformers` causal LM (or pass a :class:`TracedModel` through)."""
    return model if isinstance(model, TracedModel) else TracedModel(model)
