"""Edge Pruning: learn one mask logit per edge by gradient descent (Bhaskar et al. 2024).

Every edge ``e`` gets a gate ``z_e ∈ [0, 1]`` drawn from a *hard-concrete* distribution
(Louizos et al. 2018) with location ``log α_e``, temperature ``β`` and stretch ``(l, r)``::

    u ~ U(0, 1),  s = sigmoid((log u - log(1 - u) + log α) / β),  z = clamp(s (r - l) + l, 0, 1)

The gates are the keep-mask of the traced forward (:class:`~circuits.runtime.Patch`, removed
edges read the corrupted run), so ``z`` is differentiable and the loss reaches ``log α``. The
loss is the faithfulness loss, the per-example distance ``mean_i |m_i(circuit) - m_i(full)|``
of the metric to the full model's value (for ``kl_div``, whose full-model value is 0, this is
``KL(full ‖ circuit)``), plus a one-sided Lagrangian sparsity term::

    d = max(0, (E[L0] - t) / E),  λ1 d + λ2 d^2,   E[L0] = Σ_e P(z_e > 0) = Σ_e sigmoid(log α_e - β log(-l / r))

where the target edge count ``t`` anneals linearly from ``E`` (every edge) to ``target_edges``
over the first ``ANNEAL_SHARE`` (80 %) of the steps. The deviation is measured as a fraction of
the ``E`` edges (as in Edge Pruning / CoFi) so that the λ's scale does not depend on the graph
size. ``log α`` is trained by gradient descent (Adam), ``λ1, λ2 >= 0`` by gradient ascent
(Adam, ``maximize``, clamped at 0). The constraint is one-sided (``E[L0] <= t``): a two-sided
term drives λ1 negative whenever the count undershoots, which reopens many gates at once and
scrambles the order in which edges are pruned, and that order is what the final logits rank.

Only the mask logits and the λ's get gradients (``torch.autograd.grad``); the model's
parameters are frozen during the run (``requires_grad`` restored afterwards). The only Python
loop runs over optimisation steps; gate sampling is seeded by a CPU ``torch.Generator``, so
runs are reproducible.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from ..graph import Graph, Scoring, Selection
from ..metrics import check_metric_output, get_metric, metric_name
from ..models import graph_for
from ..parallel import all_reduce_mean_, all_reduce_sum, is_main
from ..patching import PatchRunner, PreparedBatch
from ..runtime import Patch, TracedModel, as_traced
from ..tasks import Batch, Task

__all__ = ["ANNEAL_SHARE", "F_EVERY", "edge_pruning", "expected_l0", "hard_concrete_mean", "hard_concrete_sample"]

_EPS = 1e-6
ANNEAL_SHARE = 0.8
"""Share of the steps over which the edge budget anneals from every edge to ``target_edges``
(Edge Pruning anneals over 2,500 of 3,000 steps)."""


# ============================================================================================== hard concrete
def hard_concrete_sample(log_alpha: torch.Tensor, u: torch.Tensor, temperature: float,
                         stretch: tuple[float, float]) -> torch.Tensor:
    """Gates ``z = clamp(sigmoid((log u - log(1-u) + log α) / β) (r - l) + l, 0, 1)`` for uniform noise ``u``."""
    lo, hi = stretch
    u = u.clamp(_EPS, 1.0 - _EPS)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / temperature)
    return (s * (hi - lo) + lo).clamp(0.0, 1.0)


def hard_concrete_mean(log_alpha: torch.Tensor, stretch: tuple[float, float]) -> torch.Tensor:
    """The deterministic (test-time) gate ``clamp(sigmoid(log α) (r - l) + l, 0, 1)`` (Louizos et al. 2018)."""
    lo, hi = stretch
    return (torch.sigmoid(log_alpha) * (hi - lo) + lo).clamp(0.0, 1.0)


def expected_l0(log_alpha: torch.Tensor, temperature: float, stretch: tuple[float, float]) -> torch.Tensor:
    """``Σ_e P(z_e > 0) = Σ_e sigmoid(log α_e - β log(-l / r))``: the expected number of open gates."""
    lo, hi = stretch
    return torch.sigmoid(log_alpha - temperature * math.log(-lo / hi)).sum()


# ============================================================================================== edge pruning
def edge_pruning(
    model: nn.Module | TracedModel,
    data: Task | Iterable[Batch],
    metric: str | Callable | None = None,
    *,
    target_edges: int,
    steps: int = 200,
    lr: float = 0.1,
    lambda_lr: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    init: float = 3.0,
    temperature: float = 2.0 / 3.0,
    stretch: tuple[float, float] = (-0.1, 1.1),
    progress: bool = False,
    early_stop: bool = True,
) -> Graph:
    """Learn edge masks (Edge Pruning) and return a new graph whose scores are the gate logits ``log α``.

    Args:
        model: a `transformers` causal LM or a :class:`~circuits.runtime.TracedModel`.
        data: a Task (batched with ``batch_size``) or batches; step ``i`` uses batch ``i mod n_batches``.
        metric: the metric ``m`` whose per-example distance to the full model's value,
            ``mean_i |m_i(circuit) - m_i(full)|``, is the faithfulness loss. Default (None): the
            task's own metric (the one faithfulness is measured with), or ``"kl_div"`` for plain
            batches; ``"kl_div"`` gives ``KL(full ‖ circuit)`` at the answer positions (the
            published Edge Pruning loss). The metric must be differentiable.
        target_edges: the expected number of open gates to reach, ``0 <= target_edges <= E``.
        steps: optimisation steps (one gate sample and one batch per step).
        lr: Adam learning rate of the mask logits.
        lambda_lr: Adam learning rate (gradient ascent) of the Lagrange multipliers (they must grow to
            O(10-100) before the sparsity term dominates, so this is larger than ``lr``).
        seed: seeds the gate noise (a CPU ``torch.Generator``); same seed, same result.
        init: initial ``log α`` of every edge (3.0: every gate open with probability ≈ 0.99).
        temperature: the hard-concrete temperature ``β``.
        stretch: ``(l, r)`` with ``l < 0`` and ``r > 1`` (gates reach exactly 0 and 1).
        progress: show a tqdm bar with the loss, the expected edge count, the current target and the
            current normalized faithfulness ``f`` of the deterministic mask (gate mean > 0.5) on the data,
            evaluated every :data:`F_EVERY` steps and at the last one (one masked forward over the data each).
        early_stop: stop once, after the annealing, the expected edge count is at most 1% (at
            least half an edge) above ``target_edges`` and the faithfulness loss has plateaued
            (mean of the last 10 steps within 1% (+1e-4) of the 10 before, or within two standard
            errors of it: the change is below the gate-sampling noise).

    Returns:
        A new :class:`~circuits.graph.Graph` (from :func:`circuits.models.graph_for`): ``scores`` =
        final ``log α`` (signed: **rank them with** ``absolute=False``; ``|log α|`` would put
        strongly pruned edges first), ``Scoring(method="edge-pruning", steps=<steps run>)``, and
        ``in_circuit`` = deterministic gate > 0.5 (``log α`` above ``logit((0.5 - l) / (r - l))``,
        recorded as a ``threshold`` selection; dangling edges are not removed).
        ``provenance.extra["edge_pruning"]`` holds the run's settings, final state and a thinned
        trace (at most 50 rows ``[step, expected edges, faithfulness loss]``).
    """
    tm = as_traced(model)
    layout = tm.layout
    E = layout.n_edges
    _check_args(E, target_edges, steps, lr, lambda_lr, temperature, stretch, init, batch_size)
    target_edges, steps = int(target_edges), int(steps)
    lo, hi = float(stretch[0]), float(stretch[1])
    stretch = (lo, hi)
    if metric is None:
        metric = data.metric if isinstance(data, Task) else "kl_div"
    metric_fn = get_metric(metric)
    dev = tm.device
    t0 = time.perf_counter()
    # the clean and corrupted runs every step patches between (the masked-evaluation loop's preparation)
    runner = PatchRunner(tm, data, metric, batch_size=batch_size)  # in a process group: this rank's shard
    prepared, n_examples = runner.prepared, runner.n_examples
    with torch.no_grad():  # [B] per batch: the metric of the full model (every edge kept = the clean run)
        full = [metric_fn(p.clean_logits, p.batch.at_answer(), p.clean_logits).float() for p in prepared]

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    log_alpha = torch.full((E,), float(init), dtype=torch.float32, device=dev, requires_grad=True)
    lambdas = torch.zeros(2, dtype=torch.float32, device=dev, requires_grad=True)
    opt = torch.optim.Adam([log_alpha], lr=lr)
    opt_lambda = torch.optim.Adam([lambdas], lr=lambda_lr, maximize=True)
    anneal = max(1, round(ANNEAL_SHARE * steps))
    tol = max(0.01 * target_edges, 0.5)
    history: list[float] = []
    trace: list[tuple[int, float, float]] = []  # (step, expected edges, faithfulness loss)
    it: Iterable[int] = range(steps)
    bar = None
    if progress and is_main():
        from tqdm.auto import tqdm

        it = bar = tqdm(it, desc="edge pruning", unit="step")
    steps_run = 0
    faith = _CurrentFaithfulness.when_shown(runner, stretch, progress)
    with _frozen(tm.model), torch.enable_grad():
        for step in it:
            target_t = E - (E - target_edges) * min(1.0, step / anneal)
            u = torch.rand(E, generator=gen).to(dev)
            i = step % len(prepared)
            task_loss, l0 = _step(tm, prepared[i], log_alpha, lambdas, u, target_t,
                                  (metric_fn, full[i]), (temperature, stretch), (opt, opt_lambda))
            steps_run = step + 1
            history.append(float(task_loss.detach()))
            trace.append((step, float(l0.detach()), history[-1]))
            f = faith(log_alpha, step, steps) if faith is not None else "-"
            if bar is not None:
                bar.set_postfix(loss=f"{history[-1]:.4g}", edges=f"{trace[-1][1]:.1f}", target=f"{target_t:.0f}", f=f)
            if early_stop and step >= anneal and trace[-1][1] - target_edges <= tol and _plateau(history):
                break
    if bar is not None:
        bar.close()

    info = {
        "target_edges": int(target_edges), "steps": int(steps), "steps_run": steps_run, "lr": float(lr),
        "lambda_lr": float(lambda_lr), "seed": int(seed), "init": float(init), "temperature": float(temperature),
        "stretch": [lo, hi], "final_loss": history[-1] if history else None,
        "lambdas": [float(x) for x in lambdas.detach().cpu()], "trace": _thin(trace),
    }
    scoring = Scoring(method="edge-pruning", metric=metric_name(metric), steps=steps_run, absolute=False, ablation="patching",
                      n_examples=n_examples, seconds=round(time.perf_counter() - t0, 4))
    return _result(tm, log_alpha, scoring, info, temperature, stretch)


F_EVERY = 10
"""With ``progress``, the current circuit's faithfulness is evaluated every this many steps."""


class _CurrentFaithfulness:
    """``f`` of the deterministic mask of the current gate logits on the runner's data, for the progress bar."""

    def __init__(self, runner: PatchRunner, stretch: tuple[float, float]) -> None:
        self.runner, self.stretch = runner, stretch
        self.m_full, self.m_empty = runner.full_and_empty()
        self.text = "-"

    @classmethod
    def when_shown(cls, runner: PatchRunner, stretch: tuple[float, float], progress: bool) -> _CurrentFaithfulness | None:
        """An instance when any rank shows a bar, else None. Its evaluations all-reduce, so every rank takes
        part when any rank shows a bar (the CLI runs ranks other than 0 quietly)."""
        shown = bool(all_reduce_sum(torch.tensor([float(progress)])) > 0)
        return cls(runner, stretch) if shown else None

    def __call__(self, log_alpha: torch.Tensor, step: int, steps: int) -> str:
        """The bar's ``f`` text: re-evaluated every :data:`F_EVERY` steps and at the last step ("-" if undefined)."""
        span = self.m_full - self.m_empty
        if (step % F_EVERY == 0 or step == steps - 1) and abs(span) > 1e-9:
            keep = (hard_concrete_mean(log_alpha.detach(), self.stretch) > 0.5).float()
            self.text = f"{(float(self.runner.metric_values(keep[None])[0]) - self.m_empty) / span:.3f}"
        return self.text


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """The model's parameters get no gradient inside (``requires_grad`` restored after, even on errors)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _step(tm: TracedModel, prepared: PreparedBatch, log_alpha: torch.Tensor,
          lambdas: torch.Tensor, u: torch.Tensor, target_t: float, metric: tuple[Callable, torch.Tensor],
          gate: tuple[float, tuple[float, float]], optimisers: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on one batch: sample gates, patched forward, loss, update; returns (task loss, E[L0]).

    ``metric`` is the metric and its full-model values ``[B]`` on this batch."""
    (metric_fn, full), (temperature, stretch), (opt, opt_lambda) = metric, gate, optimisers
    E = log_alpha.numel()
    gates = hard_concrete_sample(log_alpha, u, temperature, stretch)
    batch, reference, clean_logits = prepared.batch, prepared.reference, prepared.clean_logits
    out = tm.run(batch.clean, batch.attention_mask, patch=Patch(gates[None], reference), logit_positions=batch.answer_pos)
    values = check_metric_output(metric_fn(out.logits, batch.at_answer(), clean_logits), len(batch))
    if not values.requires_grad:
        raise ValueError("the metric's output has no gradient: edge pruning needs a differentiable metric of the "
                         "logits (accuracy and top1 are not; use logit_diff, prob_diff, kl_div or answer_logprob)")
    task_loss = (values.float() - full).abs().mean()  # for kl_div: full = 0, values >= 0: the mean KL
    l0 = expected_l0(log_alpha, temperature, stretch)
    dev_frac = torch.relu((l0 - target_t) / E)  # one-sided: only a count above the budget costs
    loss = task_loss + lambdas[0] * dev_frac + lambdas[1] * dev_frac * dev_frac
    g_alpha, g_lambda = torch.autograd.grad(loss, [log_alpha, lambdas])
    task_loss = task_loss.detach().clone()
    # in a process group: every rank steps with the gradient (and logs the loss) of all ranks' batches,
    # so the masks, and the early-stop decision, stay identical across ranks
    all_reduce_mean_([g_alpha, g_lambda, task_loss])
    log_alpha.grad, lambdas.grad = g_alpha, g_lambda
    opt.step()
    opt_lambda.step()
    with torch.no_grad():
        lambdas.clamp_(min=0.0)  # multipliers of an inequality constraint
    return task_loss, l0


def _result(tm: TracedModel, log_alpha: torch.Tensor, scoring: Scoring, info: dict, temperature: float,
            stretch: tuple[float, float]) -> Graph:
    """The new graph: scores = final ``log α``; circuit = deterministic gate > 0.5."""
    lo, hi = stretch
    scores = log_alpha.detach().float().cpu()
    with torch.no_grad():
        keep = hard_concrete_mean(scores, stretch) > 0.5
        info["expected_edges"] = float(expected_l0(scores, temperature, stretch))
    p_open = (0.5 - lo) / (hi - lo)
    cut = math.log(p_open / (1.0 - p_open))
    graph = graph_for(tm.model).with_scores(scores, scoring=scoring)
    graph = graph.with_circuit(keep, Selection(rule="threshold", t=cut, absolute=False, prune=False))
    return graph.with_provenance(extra={**dict(graph.provenance.extra), "edge_pruning": info})


def _check_args(E: int, target_edges: int, steps: int, lr: float, lambda_lr: float, temperature: float,
                stretch: tuple[float, float], init: float, batch_size: int) -> None:
    if isinstance(target_edges, bool) or int(target_edges) != target_edges or not 0 <= int(target_edges) <= E:
        raise ValueError(f"target_edges must be an integer in [0, {E}] (the graph's edge count), got {target_edges!r}")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    for name, v in (("lr", lr), ("lambda_lr", lambda_lr), ("temperature", temperature)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    if not math.isfinite(float(init)):
        raise ValueError(f"init (the initial log alpha) must be finite, got {init!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    try:
        lo, hi = (float(x) for x in stretch)
    except (TypeError, ValueError):
        raise ValueError(f"stretch must be a pair (l, r) with l < 0 and r > 1, got {stretch!r}") from None
    if not (lo < 0.0 and hi > 1.0):
        raise ValueError(f"stretch must be a pair (l, r) with l < 0 and r > 1 (so gates reach exactly 0 and 1), "
                         f"got {stretch!r}")


def _thin(trace: list[tuple[int, float, float]], n: int = 50) -> list[list[float]]:
    """At most ``n`` evenly spaced rows ``[step, expected edges, loss]`` of the trace (first and last kept)."""
    if len(trace) > n:
        idx = sorted({round(i * (len(trace) - 1) / (n - 1)) for i in range(n)})
        trace = [trace[i] for i in idx]
    return [[int(s), round(float(e), 4), round(float(v), 6)] for s, e, v in trace]


def _plateau(history: list[float], window: int = 10, rtol: float = 0.01, atol: float = 1e-4) -> bool:
    """The mean loss of the last ``window`` steps is within ``rtol`` (+ ``atol``) of the ``window`` before,
    or differs from it by less than two standard errors (the gates' sampling noise)."""
    if len(history) < 2 * window:
        return False
    last, prev = torch.tensor(history[-window:]), torch.tensor(history[-2 * window:-window])
    diff = abs(float(last.mean() - prev.mean()))
    se = math.sqrt(float(last.var() + prev.var()) / window)
    return diff <= max(rtol * abs(float(prev.mean())) + atol, 2.0 * se)
