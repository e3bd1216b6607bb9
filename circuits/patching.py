"""Exact patching: metric under edge masks, exact single-edge effects, ACDC, path patching.

Everything here is built on one primitive, :func:`masked_metric`: the mean metric of the
task under each of K edge masks, evaluated K masks at a time in the batch dimension
(``K * B`` rows per forward, chunked to ``max_rows``). Clean and corrupted runs are
computed once per batch and reused by every chunk.

Effects use the attribution sign: ``effect = m(reference) - m(patched)`` for a metric where
higher is better (``m(patched) - m(reference)`` for KL/NLL), so positive means the patched
edges supported the behaviour.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .attribution import _batches, as_traced, at_answer_position
from .graph import Graph
from .metrics import get_metric, is_higher_better
from .runtime import Prefix, RunOutput, TracedModel
from .single_edge import single_edge_metric_values
from .tasks.base import Batch, Task

ABLATIONS = ("patching", "mean", "zero")


@dataclass
class _Prepared:
    batch: Batch
    reference: torch.Tensor  # [S, B or 1, P or 1, d] values removed edges read
    clean_logits: torch.Tensor  # [B, 1, V]: at the answer positions
    corrupted_logits: torch.Tensor | None = None  # [B, 1, V]: the corrupted run's (ablation "patching")


class PatchRunner:
    """Evaluate a task's metric under many edge masks, reusing the clean/corrupted runs.

    Args:
        model: a `transformers` causal LM or a :class:`TracedModel`.
        data: a Task or batches; all batches are prepared once.
        metric: name or callable (default: the task's).
        ablation: what removed edges read: ``patching`` (the corrupted run), ``mean``
            (the mean clean sender output over the data, per sender) or ``zero``.
        max_rows: at most this many ``mask x example`` rows per forward pass.
    """

    def __init__(
        self,
        model: nn.Module | TracedModel,
        data: Task | Iterable[Batch],
        metric: str | Callable | None = None,
        ablation: str = "patching",
        batch_size: int = 16,
        max_rows: int = 512,
        graph: Graph | None = None,
    ) -> None:
        if ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {ablation!r}; valid: {', '.join(ABLATIONS)}")
        self.tm = as_traced(model, graph)
        self.graph = self.tm.graph
        if metric is None:
            if not isinstance(data, Task):
                raise ValueError("pass a metric (name or callable) when data is not a Task")
            metric = data.metric
        self.metric = get_metric(metric)
        self.higher = is_higher_better(self.metric)
        self.max_rows = max_rows
        self.ablation = ablation
        self.prepared: list[_Prepared] = []
        batches = [b.to(self.tm.device) for b in _batches(data, batch_size)]
        with torch.no_grad():
            runs = []
            for b in batches:
                if b.clean.shape != b.corrupted.shape:
                    raise ValueError(
                        f"clean {tuple(b.clean.shape)} and corrupted {tuple(b.corrupted.shape)} differ in shape; "
                        "clean and corrupted prompts must tokenize to the same length"
                    )
                clean = self.tm.run(b.clean, b.attention_mask, record=ablation == "mean", logit_positions=b.answer_pos)
                corr = self.tm.run(b.corrupted, b.attention_mask, record=True, logit_positions=b.answer_pos) if ablation == "patching" else None
                runs.append((b, clean, corr))
            mean = None
            if ablation == "mean":
                tot, cnt = None, 0.0
                for b, clean, _ in runs:
                    w = b.attention_mask[None, :, :, None].to(clean.senders.dtype)
                    s = (clean.senders * w).sum(dim=(1, 2))
                    tot = s if tot is None else tot + s
                    cnt += float(b.attention_mask.sum())
                mean = (tot / cnt)[:, None, None, :]  # [S, 1, 1, d]
            for b, clean, corr in runs:
                if ablation == "patching":
                    ref = corr.senders
                elif ablation == "mean":
                    ref = mean
                else:
                    ref = torch.zeros(self.graph.n_senders, 1, 1, self.tm.adapter.d_model, device=self.tm.device, dtype=self.tm.dtype)
                self.prepared.append(_Prepared(b, ref, clean.logits, None if corr is None else corr.logits))
        self.n_examples = sum(len(p.batch) for p in self.prepared)

    def metric_values(
        self,
        masks: torch.Tensor,
        progress: bool = False,
        start_layer: int = 0,
        prefixes: list[RunOutput] | None = None,
    ) -> torch.Tensor:
        """Mean metric over the data for each mask: masks ``[K, E]`` (1 = keep) -> ``[K]``.

        With ``start_layer`` > 0, every mask must equal the mask of ``prefixes`` (from
        :meth:`base_runs`) on edges into layers before ``start_layer``; those layers are then
        not recomputed.
        """
        g = self.graph
        masks = g.edge_mask(masks)
        if masks.dim() == 1:
            masks = masks[None]
        if start_layer and prefixes is None:
            raise ValueError("start_layer > 0 needs the base runs to resume from (prefixes=runner.base_runs(mask))")
        K = masks.shape[0]
        total = torch.zeros(K, dtype=torch.float64)
        chunks = []
        for i, p in enumerate(self.prepared):
            per = max(1, self.max_rows // len(p.batch))
            for k0 in range(0, K, per):
                chunks.append((i, p, k0, min(K, k0 + per)))
        it: Iterable = chunks
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(chunks, desc="patching", unit="chunk")
        with torch.no_grad():
            for i, p, k0, k1 in it:
                b = p.batch
                resume = None
                if start_layer:
                    base = prefixes[i]
                    resume = Prefix(start_layer, base.resid[start_layer], base.senders)
                patch = 1.0 - masks[k0:k1].to(self.tm.device)
                out = self.tm.run(b.clean, b.attention_mask, corrupted=p.reference, patch=patch,
                                  logit_positions=b.answer_pos, resume=resume)
                total[k0:k1] += self.chunk_metric(p, out.logits, k1 - k0)
        return (total / self.n_examples).float()

    def chunk_metric(self, p: _Prepared, logits: torch.Tensor, n: int) -> torch.Tensor:
        """Metric summed over ``p``'s examples for each of ``n`` runs stacked mask-major:
        answer-position ``logits`` ``[n * B, 1, V]`` -> ``[n]`` float64 on the CPU."""
        b = p.batch
        batch = at_answer_position(_repeat_batch(b, n))
        vals = self.metric(logits, batch, p.clean_logits.repeat(n, 1, 1)).float().view(n, len(b))
        return vals.sum(1).double().cpu()

    def base_runs(self, mask: torch.Tensor) -> list[RunOutput]:
        """One recorded run per prepared batch under ``mask`` ([E]), to resume masked runs from."""
        patch = 1.0 - self.graph.edge_mask(mask).to(self.tm.device)
        with torch.no_grad():
            return [
                self.tm.run(p.batch.clean, p.batch.attention_mask, corrupted=p.reference, patch=patch, record=True,
                            record_resid=True, logit_positions=p.batch.answer_pos)
                for p in self.prepared
            ]

    def receiver_layers(self) -> torch.Tensor:
        """``[R]`` the layer at which each receiver reads (``n_layers`` for the logits)."""
        g = self.graph
        r = torch.arange(g.n_receivers)
        return torch.where(r == g.n_receivers - 1, torch.tensor(g.n_layers), r // (3 * g.n_heads + 1))

    def badness(self, values: torch.Tensor) -> torch.Tensor:
        """Map metric values to 'lower is better' (for effects: effect = badness(patched) - badness(ref))."""
        return -values if self.higher else values

    def full_and_empty(self) -> tuple[float, float]:
        """``(m(N), m(∅))``: every edge kept, every edge removed."""
        E = self.graph.n_edges
        v = self.metric_values(torch.stack([torch.ones(E), torch.zeros(E)]))
        return float(v[0]), float(v[1])


def _repeat_batch(b: Batch, n: int) -> Batch:
    if n == 1:
        return b
    return Batch(
        clean=b.clean.repeat(n, 1),
        corrupted=b.corrupted.repeat(n, 1),
        attention_mask=b.attention_mask.repeat(n, 1),
        answers=b.answers.repeat(n, 1),
        wrong=b.wrong.repeat(n, 1),
        answer_pos=b.answer_pos.repeat(n),
    )


def masked_metric(
    model: nn.Module | TracedModel,
    data: Task | Iterable[Batch],
    masks: torch.Tensor,
    metric: str | Callable | None = None,
    ablation: str = "patching",
    batch_size: int = 16,
    max_rows: int = 512,
) -> torch.Tensor:
    """Mean metric for each edge mask ``[K, E]`` (or ``[E]``) -> ``[K]``."""
    return PatchRunner(model, data, metric, ablation, batch_size, max_rows).metric_values(masks)


# ---------------------------------------------------------------------- exact effects
def exact_edge_effects(
    model: nn.Module | TracedModel,
    data: Task | Iterable[Batch],
    metric: str | Callable | None = None,
    edges: torch.Tensor | Sequence[str] | None = None,
    base_mask: torch.Tensor | None = None,
    ablation: str = "patching",
    batch_size: int = 16,
    max_rows: int = 512,
    progress: bool = False,
    runner: PatchRunner | None = None,
) -> torch.Tensor:
    """Exact effect of patching each edge alone: ``[E]`` (NaN for edges not evaluated).

    ``effect_e = badness(base minus e) - badness(base)``: for logit difference that is
    ``m(base) - m(base without e)``, the quantity EAP approximates. ``base_mask`` defaults to
    the full graph. Edges are evaluated ``max_rows // batch`` at a time. Against the full
    graph only the edge's receiver node is recomputed, then the later layers
    (:mod:`circuits.single_edge`); against another base mask each edge's patched run resumes
    at its receiver's layer from a recorded base run (earlier layers are unchanged).
    """
    r = runner or PatchRunner(model, data, metric, ablation, batch_size, max_rows)
    g = r.graph
    base = torch.ones(g.n_edges) if base_mask is None else g.edge_mask(base_mask).float()
    if edges is None:
        idx = torch.arange(g.n_edges)
    elif isinstance(edges, torch.Tensor) and edges.dtype == torch.bool:
        idx = edges.nonzero().flatten()
    elif isinstance(edges, torch.Tensor):
        idx = edges.long().flatten()
    else:
        idx = g.edge_index(list(edges))
    base_bad = float(r.badness(r.metric_values(base[None]))[0])
    out = torch.full((g.n_edges,), float("nan"))
    if bool((base > 0.5).all()):  # the usual case: one edge removed from the full graph
        out[idx] = r.badness(single_edge_metric_values(r, idx, progress)) - base_bad
        return out
    prefixes = r.base_runs(base)
    layer_of_edge = r.receiver_layers()[g.edge_receiver[idx]]
    for layer in layer_of_edge.unique().tolist():
        # edges into layer `layer` leave every earlier layer as in the base run: resume there
        sel = idx[layer_of_edge == layer]
        masks = base.repeat(len(sel), 1)
        masks[torch.arange(len(sel)), sel] = 0.0
        vals = r.metric_values(masks, progress=progress, start_layer=layer, prefixes=prefixes)
        out[sel] = r.badness(vals) - base_bad
    return out


# ---------------------------------------------------------------------- ACDC
@dataclass
class ACDCResult:
    """Outcome of :func:`acdc`.

    ``scores``: per edge, the badness increase seen when it was tried (0 for edges skipped
    because their receiver no longer reached the logits); ``order``: edge indices in the
    order they were decided; ``kept``: the decision for each of them.
    """

    graph: Graph
    threshold: float
    scores: torch.Tensor
    order: list[int] = field(default_factory=list)
    kept: list[bool] = field(default_factory=list)
    n_forward_batches: int = 0
    seconds: float = 0.0
    metric_value: float = float("nan")


def acdc(
    model: nn.Module | TracedModel,
    data: Task | Iterable[Batch],
    threshold: float,
    metric: str | Callable | None = "kl_div",
    *,
    absolute: bool = False,
    ablation: str = "patching",
    batch_size: int = 16,
    max_rows: int = 512,
    atol: float = 1e-6,
    progress: bool = False,
    graph: Graph | None = None,
) -> ACDCResult:
    """ACDC (Conmy et al. 2023): reverse-topological sweep removing edges that matter less than τ.

    For each receiver, from the logits backwards, and each of its incoming edges (latest
    sender first), the edge is tentatively removed from the current circuit; it is removed
    for good when the badness (KL to the clean model, or minus the task metric) rises by
    less than ``threshold`` (``|Δ|`` if ``absolute``), plus a float-noise tolerance ``atol``.

    Batched but exactly sequential: the candidates of a receiver are evaluated together as
    the chain "remove e1", "remove e1,e2", ... (assuming removals); the chain is valid up to
    the first edge that is kept, and the rest is re-evaluated from there. Receivers whose
    node no longer reaches the logits lose their edges without evaluation (Δ = 0 exactly).
    """
    if threshold < 0:
        raise ValueError(f"the ACDC threshold τ must be >= 0, got {threshold}")
    t0 = time.perf_counter()
    r = PatchRunner(model, data, metric, ablation, batch_size, max_rows, graph=graph)
    g = r.graph.copy()
    E = g.n_edges
    current = torch.ones(E)
    scores = torch.zeros(E)
    order: list[int] = []
    kept: list[bool] = []
    cur_bad = float(r.badness(r.metric_values(current[None]))[0])
    n_batches = 1
    lookup = g.edge_lookup()  # [S, R]
    pbar = None
    if progress:
        from tqdm.auto import tqdm

        pbar = tqdm(total=E, desc="ACDC", unit="edge")
    for recv in reversed(range(g.n_receivers)):
        cand = lookup[:, recv]
        cand = cand[cand >= 0].flip(0)  # latest sender first
        if len(cand) == 0:
            continue
        recv_node = int(g.receiver_node[recv])
        if recv_node != g.n_senders and not _reaches_logits(g, current, recv_node):
            current[cand] = 0.0
            order += cand.tolist()
            kept += [False] * len(cand)
            if pbar:
                pbar.update(len(cand))
            continue
        pending = cand.tolist()
        while pending:
            chain = current.repeat(len(pending), 1)
            for j, e in enumerate(pending):
                chain[j:, e] = 0.0
            bad = r.badness(r.metric_values(chain)).tolist()
            n_batches += 1
            prev = cur_bad
            consumed = 0
            for j, e in enumerate(pending):
                delta = bad[j] - prev
                scores[e] = delta
                order.append(e)
                consumed += 1
                test = abs(delta) if absolute else delta
                if test < threshold + atol:
                    current[e] = 0.0
                    prev = bad[j]
                    kept.append(False)
                else:
                    kept.append(True)
                    break
            cur_bad = prev
            pending = pending[consumed:]
            if pbar:
                pbar.update(consumed)
                pbar.set_postfix(kept=int(current.sum()), removed=len(order) - sum(kept))
    if pbar:
        pbar.close()
    g.in_circuit = current > 0.5
    g.scores = scores
    g.meta["acdc"] = {"threshold": threshold, "absolute": absolute, "ablation": ablation, "edges_kept": int(current.sum())}
    final = float(r.metric_values(current[None])[0])
    return ACDCResult(g, threshold, scores, order, kept, n_batches, time.perf_counter() - t0, final)


def _reaches_logits(g: Graph, mask: torch.Tensor, node: int) -> bool:
    """Whether ``node`` has a path of kept edges to the logits."""
    reach = torch.zeros(g.n_nodes, dtype=torch.bool)
    reach[g.n_senders] = True
    keep = mask > 0.5
    es, er = g.edge_sender[keep], g.receiver_node[g.edge_receiver[keep]]
    # nodes are topologically ordered: one backwards sweep over senders suffices
    for s in range(g.n_senders - 1, node - 1, -1):
        if bool(reach[er[es == s]].any()):
            reach[s] = True
    return bool(reach[node])


# ---------------------------------------------------------------------- path patching
def _expand_receivers(g: Graph, receivers: Sequence[str]) -> list[int]:
    out = []
    for name in receivers:
        if name in ("logits",) or name.startswith("m") or "<" in name:
            out.append(g.receiver_index(name))
        else:  # a head: all of q, k, v
            g.sender_index(name)
            out += [g.receiver_index(f"{name}<{c}>") for c in "qkv"]
    return out


def path_patching_masks(g: Graph, senders: Sequence[Sequence[str]], receivers: Sequence[str]) -> torch.Tensor:
    """Masks ``[K, E]``: for each sender set, remove the edges from it into ``receivers``."""
    if not receivers:
        raise ValueError("path patching needs at least one receiver (e.g. 'a9.h9<q>', 'a10.h0', 'logits')")
    r_idx = torch.tensor(_expand_receivers(g, receivers))
    masks = torch.ones(len(senders), g.n_edges)
    lookup = g.edge_lookup()
    for k, sset in enumerate(senders):
        if not sset:
            raise ValueError("empty sender set: name at least one sender node (e.g. ['a7.h3'])")
        s_idx = torch.tensor([g.sender_index(s) for s in sset])
        e = lookup[s_idx[:, None], r_idx[None, :]].flatten()
        e = e[e >= 0]
        if len(e) == 0:
            raise ValueError(f"receivers {list(receivers)} are not downstream of senders {list(sset)}: no edges connect them")
        masks[k, e] = 0.0
    return masks


def path_patching(
    model: nn.Module | TracedModel,
    data: Task | Iterable[Batch],
    senders: Sequence[str],
    receivers: Sequence[str],
    metric: str | Callable | None = None,
    batch_size: int = 16,
    runner: PatchRunner | None = None,
) -> float:
    """Metric change when ``senders`` are patched to corrupted only along their direct paths
    into ``receivers`` (everything else clean; downstream of the receivers recomputed).

    Returns ``m(patched) - m(clean)`` (negative when the path supports the behaviour for a
    higher-is-better metric), as in Wang et al.'s plots.
    """
    r = runner or PatchRunner(model, data, metric, batch_size=batch_size)
    masks = path_patching_masks(r.graph, [list(senders)], receivers)
    vals = r.metric_values(torch.cat([torch.ones(1, r.graph.n_edges), masks]))
    return float(vals[1] - vals[0])


def path_patching_grid(
    model: nn.Module | TracedModel,
    data: Task | Iterable[Batch],
    receivers: Sequence[str],
    metric: str | Callable | None = None,
    batch_size: int = 16,
    max_rows: int = 512,
    normalize: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Every sender head × ``receivers``: ``[L, H]`` metric changes (NaN where a head is not upstream).

    With ``normalize`` the changes are divided by ``m(clean) - m(corrupted)`` (as a fraction).
    """
    r = PatchRunner(model, data, metric, batch_size=batch_size, max_rows=max_rows)
    g = r.graph
    r_idx = torch.tensor(_expand_receivers(g, receivers))
    lookup = g.edge_lookup()
    masks, cells = [], []
    for layer in range(g.n_layers):
        for h in range(g.n_heads):
            s = g.sender_index(f"a{layer}.h{h}")
            e = lookup[s, r_idx]
            e = e[e >= 0]
            if len(e):
                m = torch.ones(g.n_edges)
                m[e] = 0.0
                masks.append(m)
                cells.append((layer, h))
    if not masks:
        raise ValueError(f"no attention head is upstream of receivers {list(receivers)}")
    E = g.n_edges
    vals = r.metric_values(torch.cat([torch.ones(1, E), torch.zeros(1, E), torch.stack(masks)]), progress=progress)
    grid = torch.full((g.n_layers, g.n_heads), float("nan"))
    for (layer, h), v in zip(cells, vals[2:].tolist()):
        grid[layer, h] = v - float(vals[0])
    if normalize:
        span = float(vals[0] - vals[1])
        if abs(span) < 1e-12:
            raise ValueError("m(clean) equals m(corrupted): normalisation undefined")
        grid = grid / span
    return grid


# ---------------------------------------------------------------------- iterative pruning
def iterative_prune(
    model: nn.Module | TracedModel,
    data: Task | Iterable[Batch],
    n_edges: int,
    metric: str | Callable | None = None,
    fraction_per_round: float = 0.5,
    batch_size: int = 16,
    max_rows: int = 512,
    progress: bool = False,
) -> Graph:
    """Greedy pruning on exact effects: repeatedly drop the least important edges of the
    current circuit (``fraction_per_round`` of the surplus per round) until ``n_edges`` remain.

    Effects are recomputed against the current circuit every round, so interactions between
    removed edges are taken into account (unlike one-shot top-n on attribution scores).
    """
    r = PatchRunner(model, data, metric, batch_size=batch_size, max_rows=max_rows)
    g = r.graph.copy()
    if not 0 <= n_edges <= g.n_edges:
        raise ValueError(f"n_edges must be in [0, {g.n_edges}], got {n_edges}")
    current = torch.ones(g.n_edges)
    while int(current.sum()) > n_edges:
        alive = current.nonzero().flatten()
        eff = exact_edge_effects(None, None, edges=alive, base_mask=current, runner=r, progress=progress)[alive]
        surplus = len(alive) - n_edges
        drop = max(1, int(surplus * fraction_per_round))
        worst = alive[torch.argsort(eff)[:drop]]
        current[worst] = 0.0
    final = exact_edge_effects(None, None, edges=current.nonzero().flatten(), base_mask=current, runner=r)
    g.scores = torch.nan_to_num(final, nan=0.0)
    g.in_circuit = current > 0.5
    g.meta["iterative_prune"] = {"n_edges": n_edges, "fraction_per_round": fraction_per_round}
    return g


__all__ = [
    "ABLATIONS",
    "PatchRunner",
    "masked_metric",
    "exact_edge_effects",
    "ACDCResult",
    "acdc",
    "path_patching",
    "path_patching_masks",
    "path_patching_grid",
    "iterative_prune",
]
