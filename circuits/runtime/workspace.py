"""Scratch tensors that masked runs reuse instead of allocating afresh.

A masked forward's delta buffer (``RunState.buffer``, ``[K, B*P, 1+S, d]``: 124 MB for GPT-2 small at
8 x 32 tokens) is too large for the C allocator to keep when it is freed, so on the CPU every run got
fresh pages from the operating system and paid a page fault per 4 KiB on first touch: about 30,000
faults and a tenth of a second of kernel time per run of the benchmark. Runners that evaluate many masks
open :meth:`~circuits.runtime.TracedModel.reusing_buffers`, and each run of the same shape then takes the
previous run's buffer from a :class:`Workspace`. Every slot of it is written before it is read.
"""

from __future__ import annotations

import torch


class Workspace:
    """One held tensor per name, handed out again while the shape, dtype and device stay the same."""

    def __init__(self) -> None:
        self._held: dict[str, torch.Tensor] = {}

    def empty(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor like ``torch.empty(shape)``: the one held under ``name`` when it fits exactly,
        else a new one (the old one is let go first, so the two are never alive together)."""
        held = self._held.get(name)
        if held is not None and held.shape == shape and held.dtype == dtype and held.device == device:
            return held
        self._held.pop(name, None)
        del held
        self._held[name] = torch.empty(shape, dtype=dtype, device=device)
        return self._held[name]
