"""Scratch tensors that masked runs reuse instead of allocating afresh.

A masked forward's delta buffer (``RunState.buffer``, ``[K, B*P, 1+S, d]``: about 120 MB for GPT-2 small at
8 x 32 tokens) is too large for the C allocator to keep when it is freed, so on the CPU every run got
fresh pages from the operating system and paid a page fault per 4 KiB on first touch
(``benchmarks/bench_forward.py`` prints the count per run). Runners that evaluate many masks open
:meth:`~circuits.runtime.TracedModel.reusing_buffers`, and each run then takes the previous run's
buffer, its layers' receiver inputs and the sparse masked forward's store of computed deltas from a
:class:`Workspace`. Every element handed out is written before it is read. The model keeps the last loop's
workspace for the next loop (a runner's next evaluation) until a run outside any loop lets it go, so repeated
evaluations fault in no fresh pages either; the model holds at most one loop's scratch
(:attr:`~circuits.runtime.TracedModel.held_bytes`), and a loop lets go of the kept blocks it does not ask
for before its first new allocation and when it ends (:meth:`Workspace.begin`).
"""

from __future__ import annotations

import math

import torch


class Workspace:
    """One held block of memory per name, handed out again (as a tensor of the shape asked for) while it is
    large enough and the dtype and device stay the same."""

    def __init__(self) -> None:
        self._held: dict[str, torch.Tensor] = {}  # name -> a flat tensor
        self._asked: set[str] | None = None  # names asked for since begin(), while a loop runs

    def begin(self) -> None:
        """A loop starts: from now on, blocks it has not asked for are let go before any new allocation
        (an earlier loop's leftovers never add to this loop's peak) and at :meth:`end`."""
        self._asked = set()

    def end(self) -> None:
        """The loop is over: keep only the blocks it asked for."""
        self._drop_unasked()
        self._asked = None

    def _drop_unasked(self) -> None:
        """While a loop runs, let go of the blocks it has not asked for."""
        if self._asked is not None:
            self._held = {k: v for k, v in self._held.items() if k in self._asked}

    def empty(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised contiguous tensor like ``torch.empty(shape)``: a view of the block held under
        ``name`` when that has room, else a new block (the old one is let go first, so the two are never
        alive together). The previous tensor handed out under ``name`` must no longer be in use."""
        n = math.prod(shape)
        if self._asked is not None:
            self._asked.add(name)
        held = self._held.get(name)
        # a block made under torch.inference_mode cannot be written outside it (nor the reverse be kept)
        inference = torch.is_inference_mode_enabled()
        if (held is None or held.numel() < n or held.dtype != dtype or held.device != device
                or held.is_inference() != inference):
            self._held.pop(name, None)
            del held
            self._drop_unasked()  # an earlier loop's blocks this one has not used go first
            held = self._held[name] = torch.empty(n, dtype=dtype, device=device)
        return held[:n].view(shape)

    def nbytes(self) -> int:
        """Bytes held, all names together."""
        return sum(t.numel() * t.element_size() for t in self._held.values())
