"""Reachability over kept edges: which nodes lie on ``input -> logits`` paths of a keep-mask."""

from __future__ import annotations

import torch

from .layout import GraphLayout, KeepMask


def _adjacency(layout: GraphLayout, keep: torch.Tensor) -> torch.Tensor:
    """``[N, N]`` bool: ``A[u, v]`` when some kept edge goes from node ``u`` into node ``v``."""
    A = torch.zeros(layout.n_nodes, layout.n_nodes, dtype=torch.bool)
    A[layout.edge_sender[keep], layout.edge_node()[keep]] = True
    return A


def reachability(layout: GraphLayout, keep: KeepMask) -> tuple[torch.Tensor, torch.Tensor]:
    """``(from_input, to_logits)``, each ``[N]`` bool: nodes reachable from ``input``, and nodes that
    reach ``logits``, through edges with ``keep > 0.5``.

    Propagated stage by stage over the node adjacency matrix (one forward and one backward
    sweep over the ``2L + 2`` residual stages), never per edge.
    """
    keep = (keep > 0.5).cpu() if keep.dtype != torch.bool else keep.cpu()
    if keep.shape != (layout.n_edges,):
        raise ValueError(f"edge mask must have shape [{layout.n_edges}], got {tuple(keep.shape)}")
    A = _adjacency(layout, keep)
    t = layout.node_time()
    stages = [torch.nonzero(t == s).flatten() for s in range(int(t.max()) + 1)]
    fwd = torch.zeros(layout.n_nodes, dtype=torch.bool)
    fwd[0] = True  # input
    for nodes in stages[1:]:
        fwd[nodes] = (A[:, nodes] & fwd[:, None]).any(0)
    bwd = torch.zeros(layout.n_nodes, dtype=torch.bool)
    bwd[layout.logits_node] = True
    for nodes in reversed(stages[:-1]):
        bwd[nodes] = (A[nodes, :] & bwd[None, :]).any(1)
    return fwd, bwd


def on_input_logits_paths(layout: GraphLayout, keep: KeepMask) -> torch.Tensor:
    """Bool ``[E]``: the kept edges that lie on an ``input -> logits`` path of kept edges.

    An edge ``u -> v`` survives iff ``u`` is reachable from ``input`` and ``v`` reaches ``logits``.
    This is the fixed point of EAP-IG's ``prune()`` (drop nodes lacking a kept incoming or
    outgoing edge, drop edges touching dropped nodes, repeat): in a DAG a node keeps an
    incoming and an outgoing edge at the fixed point iff it is on an input -> logits path.
    """
    fwd, bwd = reachability(layout, keep)
    kept = (keep > 0.5).cpu() if keep.dtype != torch.bool else keep.cpu()
    return kept & fwd[layout.edge_sender] & bwd[layout.edge_node()]
