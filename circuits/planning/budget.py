"""Memory budgets: parse ``--max-memory``, read the device's free memory, choose the batch and masks per forward.

:func:`choose` finds the largest batch (up to the requested one) and the most mask x example rows
per masked forward (up to :data:`MAX_ROWS`) whose :func:`~circuits.planning.memory.estimate` fits the
budget, or raises :class:`MemoryBudgetError` with the estimate and the largest batch that fits.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

from .memory import ATTRIBUTION, Estimate, estimate, format_bytes, prepared_bytes
from .shapes import DTYPE_BYTES, ModelShape, shape_of

MAX_ROWS = 512
"""Default and largest mask x example rows per masked forward (:class:`~circuits.patching.PatchRunner`'s)."""

MARGIN = 0.10
"""Share of the free memory kept back when no budget is given (allocator slack, other processes)."""
MIN_MARGIN = 256 * 2**20
"""At least this much is kept back (bytes)."""

MEMORY_FORMS = "a number of bytes (1.5e9) or with a unit: 512MB, 8GB, 1TB (powers of 1000), 8G, 8GiB, 512MiB (powers of 1024)"
"""The accepted forms of a memory size, for error messages."""

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


class MemoryBudgetError(ValueError):
    """Even the smallest batch does not fit the memory budget (or the requested batch does not)."""


def parse_memory(text: str | int | float) -> int:
    """Bytes of a memory size: ``8GB`` (10^9), ``8G`` / ``8GiB`` (2^30), ``512MB``, ``1.5e9``; ValueError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = _SIZE_RE.match(str(text))
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(f"cannot read the memory size {text!r}; give {MEMORY_FORMS}")
        value, unit = float(match.group(1)), match.group(2).lower()
    size = value * _UNITS[unit]
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"the memory size {text!r} must be a positive amount; give {MEMORY_FORMS}")
    return int(size)


def free_memory(device: str = "cpu") -> int:
    """Free memory of ``device`` in bytes: CUDA ``mem_get_info``, else the system's available memory."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def default_budget(device: str = "cpu") -> int:
    """The device's free memory less :data:`MARGIN` (at least :data:`MIN_MARGIN`)."""
    free = free_memory(device)
    return max(free - max(int(MARGIN * free), MIN_MARGIN), 0)


@dataclass(frozen=True)
class Plan:
    """The chosen ``batch`` and ``max_rows`` and the estimate at those settings, within ``budget`` bytes;
    ``sparse`` False: only the dense masked forward fits (``PatchRunner(sparse=False)``)."""

    batch: int
    max_rows: int
    estimate: Estimate
    budget: int
    sparse: bool = True

    def summary(self) -> str:
        dense = not self.sparse and self.estimate.method not in ATTRIBUTION
        path = " (dense masked forward: the sparse path's recorded runs do not fit)" if dense else ""
        return (f"batch {self.batch}, {self.max_rows} rows per masked forward{path}: about "
                f"{format_bytes(self.estimate.peak)} of {format_bytes(self.budget)}")


def choose(shape: ModelShape, method: str, tokens: int, batch: int, budget: int, examples: int | None = None,
           batch_fixed: bool = False, max_rows: int = MAX_ROWS, sparse: bool | None = None,
           device: str | None = None) -> Plan:
    """The largest batch <= ``batch`` (exactly ``batch`` if ``batch_fixed``) and the most rows per masked
    forward <= ``max_rows`` whose estimate fits ``budget`` bytes; :class:`MemoryBudgetError` otherwise.

    Masked forwards take the sparse path where the family has it (``sparse`` None or True); when that
    does not fit (its recorded runs grow with the examples) but the dense path does with a larger
    batch, the plan says ``sparse=False`` and the runner must be built with ``PatchRunner(sparse=False)``.
    ``device``: where the run goes (``"cpu"``, ``"cuda:0"``, ...; see :func:`~circuits.planning.estimate`).
    """
    use_sparse = shape.sparse if sparse is None else bool(sparse) and shape.sparse
    if method in ATTRIBUTION or not use_sparse:
        return _choose(shape, method, tokens, batch, budget, examples, batch_fixed, max_rows, use_sparse, device)
    try:
        plan = _choose(shape, method, tokens, batch, budget, examples, batch_fixed, max_rows, True, device)
    except MemoryBudgetError:
        plan = None
    if plan is not None and plan.batch == min(int(batch), max(int(examples or batch), 1)):
        return plan
    try:
        dense = _choose(shape, method, tokens, batch, budget, examples, batch_fixed, max_rows, False, device)
    except MemoryBudgetError:
        if plan is None:
            raise
        return plan
    return dense if plan is None or dense.batch > plan.batch else plan


def _choose(shape: ModelShape, method: str, tokens: int, batch: int, budget: int, examples: int | None,
            batch_fixed: bool, max_rows: int, sparse: bool, device: str | None) -> Plan:
    n = max(int(examples or batch), 1)

    def fits(b: int, rows: int) -> Estimate | None:
        e = estimate(shape, method, tokens, b, n, rows, sparse, device)
        return e if e.peak <= budget else None

    def best_rows(b: int) -> Plan | None:
        if method in ATTRIBUTION:  # no masked forwards: the rows do not matter
            e = fits(b, max_rows)
            return None if e is None else Plan(b, max_rows, e, budget)
        k_hi = max(1, max_rows // b)
        if fits(b, b) is None:
            return None
        lo, hi = 1, k_hi  # largest K with K*b rows fitting (the estimate grows with K)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(b, mid * b) else (lo, mid - 1)
        rows = max_rows if lo == k_hi else lo * b
        return Plan(b, rows, estimate(shape, method, tokens, b, n, rows, sparse, device), budget, sparse)

    batch = min(int(batch), n)
    plan = best_rows(batch)
    if plan is not None:
        return plan
    largest = _largest_batch(best_rows, batch)
    if largest is not None and not batch_fixed:
        return largest
    at = estimate(shape, method, tokens, batch if batch_fixed else 1, n, batch if batch_fixed else 1, sparse, device)
    raise MemoryBudgetError(_refusal(at, budget, largest, batch_fixed))


def runner_plan(model: Any, batches: list[Any], sparse: bool = True, device: str = "cpu",
                budget: int | None = None) -> Plan:
    """Rows per masked forward (and the path) for a :class:`~circuits.patching.PatchRunner` built with
    ``max_rows=None``: the most (up to :data:`MAX_ROWS`) whose estimate fits ``budget`` (default: the
    device's free memory less the margin), for the runner's batches (their longest and largest) and
    masks that each change most of the graph (``acdc``'s estimate, an upper bound for curves and
    evaluation). When not even one mask per forward fits, one mask per forward (the least it can do)."""
    name = str(next(model.parameters()).dtype).removeprefix("torch.")
    shape = shape_of(model.config, name if name in DTYPE_BYTES else "float32",
                     n_params=sum(p.numel() for p in model.parameters()))
    tokens = max(int(b.clean.shape[1]) for b in batches)
    batch = max(len(b) for b in batches)
    n = sum(len(b) for b in batches)
    budget = default_budget(device) if budget is None else int(budget)
    try:
        return choose(shape, "acdc", tokens, batch, budget, n, batch_fixed=True, sparse=sparse, device=device)
    except MemoryBudgetError:
        return Plan(batch, batch, estimate(shape, "acdc", tokens, batch, n, batch, sparse, device), budget, sparse)


def _largest_batch(best_rows, batch: int) -> Plan | None:
    lo, hi, found = 1, batch - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        p = best_rows(mid)
        if p is None:
            hi = mid - 1
        else:
            found, lo = p, mid + 1
    return found


def _refusal(at: Estimate, budget: int, largest: Plan | None, batch_fixed: bool) -> str:
    what = (f"{at.method} on {at.examples} examples of {at.tokens} tokens needs about {format_bytes(at.peak)} "
            f"with batch {at.batch}, more than the {format_bytes(budget)} budget")
    if batch_fixed and largest is not None:
        return f"{what}; the largest batch that fits is {largest.batch} (--batch-size {largest.batch}), or raise --max-memory"
    biggest = max(at.components, key=lambda c: c[1])
    return (f"{what} even with one example per batch (largest part: {biggest[0]}, {format_bytes(biggest[1])}); "
            "use fewer examples (--n-examples) or shorter prompts, a smaller --dtype, a larger device or --max-memory")


def choose_for_discover(shape: ModelShape, method: str, tokens: int, batch: int, budget: int, n_train: int,
                        n_test: int, *, batch_fixed: bool = False, faithfulness: bool = False,
                        device: str | None = None) -> Plan:
    """One batch and ``max_rows`` for all of :func:`circuits.discover`: scoring on the training split, then
    evaluation and the curve on the test split (with a faithfulness target the training split's prepared
    runs stay alive throughout). Returns the plan of the phase with the higher peak."""
    reserve = prepared_bytes(shape, tokens, n_train) if faithfulness else 0
    scoring_reserve = reserve if method in ATTRIBUTION else 0  # a patching method's estimate counts its own runs
    if budget - reserve <= 0:
        at = estimate(shape, "curve", tokens, 1, n_train, 1)
        raise MemoryBudgetError(_refusal(at, budget, None, False))
    phases = [choose(shape, method, tokens, batch, budget - scoring_reserve, n_train, batch_fixed, device=device),
              choose(shape, "curve", tokens, batch, budget - reserve, n_test, batch_fixed, device=device)]
    b = min(p.batch for p in phases)
    rows = min(p.max_rows for p in phases)
    sparse = all(p.sparse for p in phases)
    final = [estimate(shape, m, tokens, b, n, rows, sparse, device) for m, n in ((method, n_train), ("curve", n_test))]
    worst = max(final, key=lambda e: e.peak)
    return Plan(b, rows, worst, budget, sparse)
