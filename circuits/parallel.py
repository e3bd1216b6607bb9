"""Runs across processes with ``torch.distributed``: data parallelism and mask (edge) parallelism.

Every quantity the engine computes is a mean over examples, so in a process group each rank
takes a contiguous shard of the examples, sums over it, and the sums are all-reduced:
attribution scores, the metric of every masked forward (hence curves, evaluation, ACDC's and
refinement's decisions, which are therefore identical on every rank) and edge pruning's
gradients. Alternatively, when the data is small and the masks are many, each rank holds all
the data and evaluates a contiguous share of the masks (:data:`Parallel` ``"masks"``); the
results are summed back in mask order.

Without a process group (or with one rank) every function here is the identity, so the
single-process path runs no collective and no extra copy. Launch with ``torchrun`` (see
docs/scaling.md); :func:`init_from_env` joins the group torchrun describes in the environment.

Shards are contiguous and in rank order, so gathering per-example values rank by rank gives
them back in data order.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Hashable, Sequence
from typing import Any, Literal, TypeVar, get_args

import torch
import torch.distributed as dist

Parallel = Literal["data", "masks"]
"""How a process group shares masked evaluations: ``data`` splits the examples (every rank runs
every mask), ``masks`` splits the masks or edges (every rank holds every example)."""

PARALLEL_MODES: tuple[str, ...] = get_args(Parallel)

T = TypeVar("T")


class RankMismatchError(ValueError):
    """The ranks of a process group hold different models or data (a launch mistake)."""


class RankFailure(RuntimeError):
    """Another process of the job failed (or the launcher stopped this one); nothing was written."""


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that prints and writes files."""
    return world()[0] == 0


def shard_range(n: int, rank: int | None = None, size: int | None = None) -> range:
    """This rank's contiguous share of ``n`` items (the first ``n % size`` ranks get one more)."""
    r, w = world()
    rank, size = (r if rank is None else rank), (w if size is None else size)
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def shard(items: Sequence[T]) -> list[T]:
    """This rank's contiguous share of ``items`` (all of them in a single process)."""
    return [items[i] for i in shard_range(len(items))]


def _comm_device() -> torch.device:
    """Where collectives run: the current CUDA device for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective(fn, *args) -> Any:
    """Run a collective; a peer that died surfaces as :class:`RankFailure` with one clear message."""
    try:
        return fn(*args)
    except RuntimeError:  # gloo/NCCL report a lost peer as RuntimeError (DistBackendError)
        raise RankFailure("another process of the job failed or was stopped (its connection closed; its own "
                          "message is above); no outputs were written") from None


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over all ranks (a new tensor on ``t``'s device; ``t`` itself in a single process)."""
    if world()[1] == 1:
        return t
    x = t.detach().to(_comm_device(), copy=True)
    _collective(dist.all_reduce, x)
    return x.to(t.device)


def all_reduce_mean_(tensors: Sequence[torch.Tensor]) -> None:
    """Average tensors (e.g. gradients) over ranks in place; nothing happens in a single process."""
    size = world()[1]
    if size == 1:
        return
    for t in tensors:
        x = t.detach().to(_comm_device(), copy=True)
        _collective(dist.all_reduce, x)
        t.copy_(x.to(t.device) / size)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process)."""
    size = world()[1]
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    _collective(dist.all_gather_object, out, obj)
    return out


def gather_cat(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate every rank's ``t`` along ``dim`` in rank order (sizes along ``dim`` may differ)."""
    if world()[1] == 1:
        return t
    parts = gather_objects(t.detach().cpu())
    return torch.cat(parts, dim=dim).to(t.device)


def agree(what: str, value: Hashable) -> None:
    """Raise :class:`RankMismatchError` on every rank unless all ranks hold the same ``value``."""
    if world()[1] == 1:
        return
    values = gather_objects(value)
    if any(v != values[0] for v in values):
        shown = ", ".join(f"rank {i}: {v}" for i, v in enumerate(values))
        raise RankMismatchError(f"the processes disagree on {what} ({shown}); launch every rank with the same "
                                "model, task and options")


def fingerprint(*parts: Any) -> str:
    """A short stable hash of ``parts`` (their ``repr``; tensors by their bytes)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:12]


def init_from_env() -> torch.device | None:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1).

    Backend NCCL with device ``cuda:LOCAL_RANK`` when CUDA is available, else gloo on the CPU.
    Returns that device, or None when not launched with several processes. SIGTERM (the launcher
    stopping the job after another rank failed) then raises :class:`RankFailure`, so clean-up runs.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    signal.signal(signal.SIGTERM, _stopped)
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _stopped(signum: int, frame: Any) -> None:
    raise RankFailure("the launcher stopped this process (another process of the job failed or the job was "
                      "cancelled); no outputs were written")


def finish() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "PARALLEL_MODES", "Parallel", "RankFailure", "RankMismatchError", "agree", "all_reduce_mean_", "all_reduce_sum",
    "finish", "fingerprint", "gather_cat", "gather_objects", "init_from_env", "is_main", "shard", "shard_range",
    "world",
]
