"""Minimal faithful circuits: the smallest top-k circuit reaching a faithfulness target, then an
exact refinement of a circuit to a *1-minimal* one.

Faithfulness is MIB's normalized faithfulness on the runner's data (a ratio of means)::

    f(C) = (m(C) - m(∅)) / (m(N) - m(∅))

where ``m(N)`` keeps every edge, ``m(∅)`` removes every edge and ``m(C)`` keeps the circuit's
edges only (removed edges read what the runner's ablation says).

**Minimal** here means *1-minimal under single-edge removal*: a circuit ``C`` with
``f(C) >= target`` such that ``f(C \\ {e}) < target`` for every edge ``e`` of ``C``. It is not a
claim of minimum size: removing two edges together may still keep the target (the search over
all subsets is exponential), and a different 1-minimal circuit may be smaller.

* :func:`search_size` finds the smallest ``k`` whose top-``k`` circuit (then dangling-edge
  removal, as :func:`~circuits.circuit.prune.topn` does) meets the target: galloping over
  ``k = 1, 2, 4, ...`` then bisection, each round of probes in one batched
  :meth:`~circuits.patching.PatchRunner.evaluate` call. ``f`` is not monotone in ``k``; the
  result is the smallest *probed* ``k`` that met the target, and every probe is recorded.
* :func:`refine` turns a circuit into a 1-minimal one with exact patching: it drops edges whose
  removal keeps the target (exact effects against the current circuit, verified by batched
  evaluation), adds back the edge with the largest gain while the target is missed, and stops
  when no single removal keeps the target.

Every mask evaluation goes through the runner; the only Python loops run over search rounds
and over masks of a batch (dangling-edge removal per mask), never over a model's edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ..graph import Graph, Selection, reachability
from ..patching import PatchRunner, exact_edge_effects
from .prune import dangling_mask, topn_masks

__all__ = ["INERT_DELTA", "MAX_TARGET", "MIN_EXAMPLES", "Refinement", "SizeSearch", "check_runner", "check_target",
           "keep_mask_gradient", "refine", "search_size"]

MIN_EXAMPLES = 8
"""Fewest examples a faithfulness target is decided on (fewer make ``f`` too noisy to size a circuit)."""

MAX_TARGET = 1.5
"""Largest accepted target (``f`` above 1 means the circuit beats the full model on the metric)."""

RemovalEstimate = Literal["exact", "gradient"]
"""How :func:`refine` orders removal candidates: ``exact`` single-edge effects against the current
circuit (one masked forward per edge; smaller circuits) or their ``gradient`` (first-order) estimate
(one forward and backward pass; faster, often larger circuits). Drops are always verified exactly."""

INERT_DELTA = 0.01
"""An edge of a refined circuit is *inert* when removing it alone changes ``f`` by less than this."""


# ============================================================================================== results
@dataclass(frozen=True)
class SizeSearch:
    """Result of :func:`search_size`.

    Attributes:
        circuit: the chosen top-``k`` circuit (after dangling-edge removal) as a new graph with
            ``Selection(rule="faithfulness", n=k, t=target)`` and its faithfulness in the provenance.
        target: the faithfulness target.
        target_met: whether the circuit reaches it (False: even the best probe, usually the full
            graph, falls short; ``circuit`` is then the best probe).
        faithfulness: ``f`` of ``circuit``.
        probes: every probe in the order evaluated: ``(k requested, edges after pruning, f)``.
        m_full, m_empty: ``m(N)`` and ``m(∅)`` on the runner's data.
    """

    circuit: Graph
    target: float
    target_met: bool
    faithfulness: float
    probes: list[tuple[int, int, float]] = field(default_factory=list)
    m_full: float = math.nan
    m_empty: float = math.nan

    @property
    def k(self) -> int:
        """The ``k`` (top-``k`` before pruning) of :attr:`circuit`."""
        sel = self.circuit.provenance.selection
        return int(sel.n) if sel is not None and sel.n is not None else self.circuit.n_circuit_edges


@dataclass(frozen=True)
class Refinement:
    """Result of :func:`refine`.

    Attributes:
        circuit: the refined circuit (a new graph, ``Selection(rule="faithfulness", n=edges, t=target)``).
        target: the faithfulness target.
        faithfulness: ``f`` of ``circuit``.
        target_met: ``faithfulness >= target``.
        per_edge_removal_f: edge name -> ``f`` after removing that edge alone from ``circuit``
            (one batched evaluation of the final circuit minus each edge). The circuit is
            1-minimal iff it meets the target and every value is below the target.
        n_inert: edges whose removal changes ``f`` by less than :data:`INERT_DELTA`.
        rounds: refinement rounds run (each: one exact-effects pass or one growth step).
        converged: the last round found no removable edge and the target is met (False:
            ``max_rounds`` ran out, or the target could not be reached).
    """

    circuit: Graph
    target: float
    faithfulness: float
    target_met: bool
    per_edge_removal_f: dict[str, float]
    n_inert: int
    rounds: int
    converged: bool = True

    @property
    def is_1_minimal(self) -> bool:
        """Meets the target and no single edge can be removed while keeping it."""
        return self.target_met and all(v < self.target for v in self.per_edge_removal_f.values())


# ============================================================================================== checks
def check_target(target: float) -> float:
    try:
        t = float(target)
    except (TypeError, ValueError):
        raise ValueError(f"target faithfulness must be a number in (0, {MAX_TARGET}], got {target!r}") from None
    if not math.isfinite(t) or t <= 0.0 or t > MAX_TARGET:
        raise ValueError(
            f"target faithfulness must be in (0, {MAX_TARGET}], got {target!r} (1.0 = as good as the full model; "
            "values above 1 ask the circuit to beat it)"
        )
    return t


def check_runner(runner: PatchRunner) -> tuple[float, float]:
    """Enough examples and a defined normalization; returns ``(m(N), m(∅))``."""
    n = int(getattr(runner, "n_examples", 0))
    if n < MIN_EXAMPLES:
        raise ValueError(
            f"the runner holds {n} example(s); sizing a circuit to a faithfulness target needs at least "
            f"{MIN_EXAMPLES} (with fewer, f is too noisy to decide which edges are needed)"
        )
    m_full, m_empty = runner.full_and_empty()
    # imported here: circuits.evaluation imports circuits.circuit (a module-level import would be circular)
    from ..evaluation.faithfulness import NORMALIZATION_ATOL, normalized_faithfulness

    try:
        normalized_faithfulness(m_full, m_full, m_empty)
    except ValueError:
        raise ValueError(
            f"faithfulness is undefined on this data: m(N) = {m_full:.6g} (every edge kept) and m(∅) = {m_empty:.6g} "
            f"(every edge removed) are equal up to {NORMALIZATION_ATOL:g} or not finite, so f = (m(C) - m(∅)) / (m(N) - m(∅)) "
            "would divide by ~0. Removing every edge does not change the metric: check that the corrupted prompts "
            "change the answer, or use another metric / ablation."
        ) from None
    return m_full, m_empty


def _check_graph(graph: Graph, runner: PatchRunner, what: str) -> None:
    if not graph.same_shape(runner.layout):
        (L, H, p), (L2, H2, p2) = graph.layout.shape, runner.layout.shape
        raise ValueError(f"the {what} ({L} layers x {H} heads, parallel={p}) does not match the runner's model "
                         f"({L2} x {H2}, parallel={p2})")


class _Faith:
    """``f`` of keep-masks on the runner's data (one batched evaluate per call)."""

    def __init__(self, runner: PatchRunner, m_full: float, m_empty: float) -> None:
        self.runner, self.m_full, self.m_empty = runner, m_full, m_empty
        self.span = m_full - m_empty

    def of_values(self, m: torch.Tensor | np.ndarray) -> np.ndarray:
        return (np.asarray(m, dtype=np.float64) - self.m_empty) / self.span + 0.0

    def __call__(self, masks: torch.Tensor, around: torch.Tensor | None = None) -> np.ndarray:
        """``f`` of each mask; ``around``: the circuit they are small changes of (evaluated relative to it)."""
        masks = masks[None] if masks.dim() == 1 else masks
        if len(masks) == 0:
            return np.zeros(0)
        return self.of_values(self.runner.evaluate(masks.float(), around=around)["m"].numpy())


# ============================================================================================== search_size
def search_size(runner: PatchRunner, scores: Graph, target: float, *, absolute: bool = True,
                per_round: int = 4) -> SizeSearch:
    """The smallest top-``k`` circuit of ``scores`` whose faithfulness on the runner's data reaches ``target``.

    Circuits are :func:`~circuits.circuit.prune.topn_masks` (top ``k`` by ``|score|`` when
    ``absolute``, then dangling-edge removal). The search gallops over ``k = 1, 2, 4, ...``
    (up to ``E``) until some ``k`` meets the target, then bisects between the last failing
    and the first passing ``k``. Each round evaluates ``per_round`` probes in one batched
    :meth:`PatchRunner.evaluate` call (galloping: the next ``per_round`` doublings; bisection:
    ``per_round`` evenly spaced interior points), so a search costs about
    ``log2(E) + per_round * log_{per_round+1}(k)`` masked evaluations.

    ``f`` is not monotone in ``k``: the result is the smallest *probed* ``k`` that met the
    target (every probed ``k`` below it failed; an unprobed smaller ``k`` might pass).
    When even ``k = E`` falls short, the best probe is returned with ``target_met=False``.

    Raises ``ValueError`` for a target outside ``(0, 1.5]``, fewer than 8 examples in the runner,
    ``m(N) ≈ m(∅)`` (faithfulness undefined), NaN scores or a graph of another model.
    """
    target = check_target(target)
    if int(per_round) < 1:
        raise ValueError(f"per_round must be >= 1, got {per_round}")
    per_round = int(per_round)
    _check_graph(scores, runner, "score graph")
    m_full, m_empty = check_runner(runner)
    faith = _Faith(runner, m_full, m_empty)
    E = scores.n_edges
    probes: list[tuple[int, int, float]] = []
    seen: dict[int, tuple[int, float, torch.Tensor]] = {}  # k -> (n_edges, f, mask)

    def probe(ks: list[int]) -> None:
        ks = [k for k in dict.fromkeys(ks) if k not in seen]
        if not ks:
            return
        masks = topn_masks(scores, ks, absolute=absolute, prune=True)
        f = faith(masks)
        for k, m, fk in zip(ks, masks, f.tolist()):
            n = int(m.sum())
            seen[k] = (n, float(fk), m)
            probes.append((k, n, float(fk)))

    def passing(ks) -> list[int]:
        return sorted(k for k in ks if seen[k][1] >= target)

    # -------- galloping: k = 1, 2, 4, ..., E
    gallop, k = [], 1
    while k < E:
        gallop.append(k)
        k *= 2
    gallop.append(E)
    hi = None
    for start in range(0, len(gallop), per_round):
        chunk = gallop[start:start + per_round]
        probe(chunk)
        ok = passing(chunk)
        if ok:
            hi = ok[0]
            break
    if hi is None:  # even the full graph falls short: the best probe (ties: smallest k)
        best = min(seen, key=lambda kk: (-seen[kk][1], kk))
        return _size_result(scores, target, best, seen[best], False, probes, m_full, m_empty, absolute)
    # -------- bisection between the last failing and the first passing k
    lo = max([0] + [kk for kk in seen if kk < hi])
    while hi - lo > 1:
        span = hi - lo
        interior = sorted({lo + round(i * span / (per_round + 1)) for i in range(1, per_round + 1)} - {lo, hi})
        interior = [kk for kk in interior if lo < kk < hi]
        if not interior:  # cannot happen for hi - lo >= 2 (the middle point is interior); never loop forever
            break
        probe(interior)
        ok = passing(interior)
        if ok:
            hi = ok[0]
        lo = max([lo] + [kk for kk in seen if kk < hi])
    best = min(kk for kk in seen if seen[kk][1] >= target)  # == hi: every probe below hi failed
    return _size_result(scores, target, best, seen[best], True, probes, m_full, m_empty, absolute)


def _size_result(scores: Graph, target: float, k: int, probe: tuple[int, float, torch.Tensor], met: bool,
                 probes: list[tuple[int, int, float]], m_full: float, m_empty: float, absolute: bool) -> SizeSearch:
    _, f, mask = probe
    sel = Selection(rule="faithfulness", n=int(k), t=float(target), absolute=absolute, prune=True)
    circuit = scores.with_circuit(mask, sel).with_provenance(faithfulness=float(f))
    return SizeSearch(circuit=circuit, target=target, target_met=met, faithfulness=float(f), probes=list(probes),
                      m_full=float(m_full), m_empty=float(m_empty))


# ============================================================================================== refine
def refine(runner: PatchRunner, circuit: Graph, target: float, *, max_rounds: int = 100,
           max_candidates: int = 512, estimate: RemovalEstimate = "exact") -> Refinement:
    """Refine ``circuit`` to a 1-minimal circuit meeting ``target`` (exact patching on the runner's data).

    *1-minimal*: ``f(C) >= target`` and ``f(C \\ {e}) < target`` for every edge ``e`` of ``C``
    (minimal under single-edge removal, not of minimum size; see the module docstring).

    Dangling edges are removed first. Then each round, against the **current** circuit:

    * if ``f < target``: the outside edge with the largest gain is added back (every candidate
      ``C ∪ {e}`` in one batched evaluate; candidates are the outside edges that would not be
      dangling, at most ``max_candidates`` of them, by ``|score|`` of ``circuit``). When no
      single edge helps and the full graph meets the target, refinement restarts from the full
      graph; otherwise it stops with ``target_met=False``.
    * else: exact single-edge effects of every circuit edge
      (:func:`~circuits.patching.exact_edge_effects` with ``base_mask`` = the current circuit), or with
      ``estimate="gradient"`` their first-order estimate, give ``f(C \\ {e})``; the edges whose
      removal keeps the target are dropped greedily by
      smallest effect: the first ``1, 2, 3, 4, 6, 8, 12, ...`` of them and all of them (each
      set followed by dangling-edge removal), plus the first one alone, are evaluated in one
      batched call and the largest set whose ``f`` still meets the target is dropped, so
      ``f >= target`` holds after every round.
    * when no exact effect allows a removal, every single removal is checked by one batched
      evaluate; if none keeps the target the circuit is 1-minimal and refinement stops.

    ``per_edge_removal_f`` in the result comes from that final batched check.
    Raises ``ValueError`` like :func:`search_size`.
    """
    target = check_target(target)
    if int(max_rounds) < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    _check_graph(circuit, runner, "circuit")
    m_full, m_empty = check_runner(runner)
    faith = _Faith(runner, m_full, m_empty)
    layout = runner.layout
    E = layout.n_edges
    rank = circuit.scores.detach().float().abs().nan_to_num(nan=0.0)

    current = dangling_mask(circuit, circuit.in_circuit)
    f_cur = float(faith(current)[0])
    rounds, converged, fell_back = 0, False, False
    singles_f: dict[int, float] | None = None  # edge index -> f(C \ {e}) for the current circuit
    while rounds < max_rounds:
        rounds += 1
        singles_f = None
        if f_cur < target:
            grown = _grow(faith, layout, current, f_cur, rank, max_candidates)
            if grown is not None:
                current, f_cur = grown
                continue
            if not fell_back and 1.0 >= target and not bool(current.all()):
                fell_back = True  # no single edge helps: restart from the full graph (f = 1)
                current, f_cur = torch.ones(E, dtype=torch.bool), float(faith(torch.ones(E))[0])
                continue
            break  # the target cannot be reached by adding single edges
        if estimate == "gradient":  # a cheap first-order round; exact single removals when it drops nothing
            dropped = _drop_first_order(runner, faith, circuit, current, f_cur, target)
            if dropped is not None:
                current, f_cur = dropped
                continue
        # f(C \ {e}) exactly for every circuit edge (exact effects against the current circuit)
        alive = current.nonzero().flatten()
        f_single = _exact_f_minus(runner, faith, current, alive, f_cur)
        singles_f = dict(zip(alive.tolist(), f_single.tolist()))
        ok = np.nonzero(f_single >= target)[0]
        if len(ok) == 0:
            converged = True
            break
        order = alive[torch.as_tensor(ok[np.argsort(-f_single[ok], kind="stable")], dtype=torch.long)]
        current, f_cur = _verified_drop(faith, circuit, current, order, target) or (
            _without(current, order[0]), float(f_single[ok].max()))
    if singles_f is None:  # rounds ran out (or the target is out of reach): check the final circuit once
        alive = current.nonzero().flatten()
        singles_f = dict(zip(alive.tolist(), _exact_f_minus(runner, faith, current, alive, f_cur).tolist()))
    names = layout.edge_names(list(singles_f)) if singles_f else []
    per_edge = {n: float(v) for n, v in zip(names, singles_f.values())}
    n_inert = sum(abs(v - f_cur) < INERT_DELTA for v in per_edge.values())
    sel = Selection(rule="faithfulness", n=int(current.sum()), t=float(target), prune=True)
    out = circuit.with_circuit(current, sel).with_provenance(faithfulness=float(f_cur))
    return Refinement(circuit=out, target=target, faithfulness=float(f_cur), target_met=f_cur >= target,
                      per_edge_removal_f=per_edge, n_inert=int(n_inert), rounds=rounds,
                      converged=converged and f_cur >= target)


def _prefix_sizes(n: int) -> list[int]:
    """Batch sizes ``1, 2, 3, 4, 6, 8, 12, 16, ...`` (powers of 2 and 1.5 x powers of 2) below ``n``, then ``n``."""
    sizes, p = {n}, 1
    while p < n:
        sizes.update(s for s in (p, p + p // 2) if 1 <= s < n)
        p *= 2
    return sorted(sizes)


def _grow(faith: _Faith, layout, current: torch.Tensor, f_cur: float, rank: torch.Tensor,
          max_candidates: int) -> tuple[torch.Tensor, float] | None:
    """Add the outside edge with the largest gain (one batched evaluate); None when none improves ``f``."""
    fwd, bwd = reachability(layout, current)
    # an added edge u -> v is on an input -> logits path iff u is reached from input and v reaches logits
    cand = (~current & fwd[layout.edge_sender] & bwd[layout.edge_node()]).nonzero().flatten()
    if len(cand) == 0:
        return None
    if len(cand) > max_candidates:
        order = torch.argsort(rank[cand], descending=True, stable=True)
        cand = cand[order[:max_candidates]]
    masks = current.repeat(len(cand), 1)
    masks[torch.arange(len(cand)), cand] = True
    f = faith(masks, around=current)
    best = int(np.argmax(f))
    if not f[best] > f_cur:
        return None
    return masks[best].clone(), float(f[best])


def _drop_first_order(runner: PatchRunner, faith: _Faith, graph: Graph, current: torch.Tensor, f_cur: float,
                      target: float) -> tuple[torch.Tensor, float] | None:
    """One cheap round: drop the most edges whose removal keeps ``f >= target``, ordered by the first-order
    estimate of ``f(C \\ {e})`` (the gradient of the metric with respect to the keep-mask at the current
    circuit: one forward and backward pass). Only a batched exact evaluation decides what is dropped;
    None when the estimate leads to no verified drop."""
    alive = current.nonzero().flatten()
    if len(alive) == 0:
        return None
    grad = keep_mask_gradient(runner, current.float())[alive].double()  # ∂m/∂keep_e
    f_minus = f_cur - grad.numpy() / faith.span
    ok = np.nonzero(f_minus >= target)[0]
    if len(ok) == 0:
        return None
    order = alive[torch.as_tensor(ok[np.argsort(-f_minus[ok], kind="stable")], dtype=torch.long)]
    return _verified_drop(faith, graph, current, order, target)


def _exact_f_minus(runner: PatchRunner, faith: _Faith, current: torch.Tensor, alive: torch.Tensor,
                   f_cur: float) -> np.ndarray:
    """``f(C \\ {e})`` of every edge in ``alive`` by exact single-edge effects against the current circuit."""
    if len(alive) == 0:
        return np.zeros(0)
    eff = exact_edge_effects(None, None, edges=alive, base_mask=current.float(), runner=runner)[alive].double()
    # effect = badness(C \ e) - badness(C), badness = -m (higher is better) or m: back to m, then f
    m_cur = faith.m_empty + f_cur * faith.span
    return faith.of_values((m_cur - eff if runner.higher else m_cur + eff).numpy())


def _without(mask: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    out = mask.clone()
    out[edge] = False
    return out


def keep_mask_gradient(runner: PatchRunner, keep: torch.Tensor) -> torch.Tensor:
    """``∂ mean m / ∂ keep_e`` at the keep-mask ``keep`` (``[E]``) on the runner's data: ``[E]`` float32.

    The patched forward is differentiable in its keep weights; one forward and backward pass per batch.
    """
    from ..runtime import Patch

    total = torch.zeros(runner.layout.n_edges, dtype=torch.float64)
    with torch.enable_grad():
        for p in runner.prepared:
            k = keep.to(runner.tm.device).detach().requires_grad_(True)
            b = p.batch
            out = runner.tm.run(b.clean, b.attention_mask, patch=Patch(k[None], p.reference), logit_positions=b.answer_pos)
            values = runner.metric(out.logits, b.at_answer(), p.clean_logits)
            (g,) = torch.autograd.grad(values.float().sum(), [k])
            total += g.detach().double().cpu()
    return (runner.sum_examples(total) / runner.n_examples).float()


def _verified_drop(faith: _Faith, graph: Graph, current: torch.Tensor, order: torch.Tensor,
                   target: float) -> tuple[torch.Tensor, float] | None:
    """Drop the largest verified prefix of ``order`` (sizes 1, 2, 3, 4, 6, 8, ..., all; each followed by
    dangling-edge removal) whose ``f`` still meets the target, all prefixes in one batched evaluation."""
    sizes = _prefix_sizes(len(order))
    cum = current.repeat(len(sizes), 1)
    for row, j in enumerate(sizes):  # row drops order[:j], then its dangling edges
        cum[row, order[:j]] = False
        cum[row] = dangling_mask(graph, cum[row])
    single = current.clone()
    single[order[0]] = False  # the best drop alone, no dangling removal
    f = faith(torch.cat([cum, single[None]]), around=current)
    f_cum = f[:-1]
    good = np.nonzero(f_cum >= target)[0]
    if len(good):
        row = int(good[-1])  # the largest verified batch of drops
        return cum[row].clone(), float(f_cum[row])
    if f[-1] >= target:
        return single, float(f[-1])
    return None
