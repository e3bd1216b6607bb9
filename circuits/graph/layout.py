"""The graph layout: the one place that knows how nodes, receivers and edges are indexed.

A transformer of ``L`` layers and ``H`` heads has these nodes and receivers:

* senders (write into the residual stream), in topological order::

      0            input
      1 + l(H+1) + h   a{l}.h{h}        (head h of layer l)
      1 + l(H+1) + H   m{l}             (MLP of layer l)

* receivers (read the residual stream), per layer ``3H + 1`` of them::

      l(3H+1) + 3h + c   a{l}.h{h}<q|k|v>   (c = 0, 1, 2: q/k/v are interleaved per head)
      l(3H+1) + 3H       m{l}
      L(3H+1)            logits

* an edge is a (sender, receiver) pair whose receiver reads the residual after the sender
  wrote it; edges are numbered row-major over the ``[S, R]`` table of valid pairs.

Every other module asks :class:`GraphLayout` for these indices and for patch weights; none
computes them itself. Masks are *keep-masks* (1 = the edge is in the circuit, see
:data:`KeepMask`); only :meth:`GraphLayout.patch_weights` turns them into the weights of the
corrupted value that the runtime reads (:data:`PatchWeights`, ``1 - keep``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import torch

QKV: tuple[str, str, str] = ("q", "k", "v")

KeepMask: TypeAlias = torch.Tensor
"""Per-edge keep weights ``[E]`` or ``[K, E]`` (K masks): 1 = edge kept (in the circuit), 0 = removed
(reads the corrupted / ablated value); fractional values interpolate. Public APIs take these."""

PatchWeights: TypeAlias = torch.Tensor
"""Dense weights of the corrupted value ``[K, S, R]``: ``1 - keep`` on edges, 0 on non-edges.
Only :meth:`GraphLayout.patch_weights` makes them; only the runtime reads them."""

_HEAD_RE = re.compile(r"^a(\d+)\.h(\d+)$")
_MLP_RE = re.compile(r"^m(\d+)$")
_RECV_RE = re.compile(r"^a(\d+)\.h(\d+)<([qkv])>$")


@dataclass(frozen=True, eq=False)
class GraphLayout:
    """Names and index tables of an ``n_layers`` x ``n_heads`` transformer's edge graph (immutable).

    Get one with :func:`layout_for` (cached per shape); :class:`~circuits.graph.Graph` holds one.
    """

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool = False
    senders: tuple[str, ...] = field(init=False, repr=False)
    receivers: tuple[str, ...] = field(init=False, repr=False)
    sender_time: torch.Tensor = field(init=False, repr=False)  # [S] residual stage a sender writes at
    receiver_time: torch.Tensor = field(init=False, repr=False)  # [R] residual stage a receiver reads
    receiver_node: torch.Tensor = field(init=False, repr=False)  # [R] index into nodes
    receiver_layer: torch.Tensor = field(init=False, repr=False)  # [R] layer of the reader (L for logits)
    valid: torch.Tensor = field(init=False, repr=False)  # [S, R] bool
    edge_sender: torch.Tensor = field(init=False, repr=False)  # [E] long
    edge_receiver: torch.Tensor = field(init=False, repr=False)  # [E] long
    edge_table: torch.Tensor = field(init=False, repr=False)  # [S, R] long: edge index or -1

    def __post_init__(self) -> None:
        L, H = self.n_layers, self.n_heads
        if L < 1 or H < 1:
            raise ValueError(f"a graph needs n_layers >= 1 and n_heads >= 1, got {L}, {H}")
        # "Time" = the residual-stream stage at which a node writes (senders) or reads (receivers):
        # input writes at 0; layer l's heads at 2l+1, its MLP at 2l+2. Attention of layer l reads
        # stage 2l+1 (everything before it); a sequential MLP reads 2l+2 (it sees layer l's heads),
        # a parallel-residual MLP reads the same stream as its attention; logits read everything.
        senders, s_time = ["input"], [0]
        for layer in range(L):
            senders += [f"a{layer}.h{h}" for h in range(H)] + [f"m{layer}"]
            s_time += [2 * layer + 1] * H + [2 * layer + 2]
        receivers, r_time, r_node, r_layer = [], [], [], []
        for layer in range(L):
            for h in range(H):
                receivers += [f"a{layer}.h{h}<{c}>" for c in QKV]
                r_time += [2 * layer + 1] * 3
                r_node += [1 + layer * (H + 1) + h] * 3
            receivers.append(f"m{layer}")
            r_time.append(2 * layer + 1 if self.parallel_attn_mlp else 2 * layer + 2)
            r_node.append(1 + layer * (H + 1) + H)
            r_layer += [layer] * (3 * H + 1)
        receivers.append("logits")
        r_time.append(2 * L + 1)
        r_node.append(len(senders))
        r_layer.append(L)
        valid = torch.tensor(s_time)[:, None] < torch.tensor(r_time)[None, :]
        idx = valid.nonzero()
        table = torch.full(valid.shape, -1, dtype=torch.long)
        table[idx[:, 0], idx[:, 1]] = torch.arange(len(idx))
        put = functools.partial(object.__setattr__, self)  # frozen: fields are set once, here
        put("senders", tuple(senders))
        put("receivers", tuple(receivers))
        put("sender_time", torch.tensor(s_time))
        put("receiver_time", torch.tensor(r_time))
        put("receiver_node", torch.tensor(r_node))
        put("receiver_layer", torch.tensor(r_layer))
        put("valid", valid)
        put("edge_sender", idx[:, 0].contiguous())
        put("edge_receiver", idx[:, 1].contiguous())
        put("edge_table", table)
        put("_sender_index", {n: i for i, n in enumerate(senders)})
        put("_receiver_index", {n: i for i, n in enumerate(receivers)})

    # ------------------------------------------------------------------ sizes
    @property
    def shape(self) -> tuple[int, int, bool]:
        """``(n_layers, n_heads, parallel_attn_mlp)``: two layouts are equal iff their shapes are."""
        return self.n_layers, self.n_heads, self.parallel_attn_mlp

    @property
    def n_senders(self) -> int:
        return len(self.senders)

    @property
    def n_receivers(self) -> int:
        return len(self.receivers)

    @property
    def n_edges(self) -> int:
        return int(self.edge_sender.numel())

    @property
    def nodes(self) -> list[str]:
        """All node names in topological order: senders, then ``logits``."""
        return list(self.senders) + ["logits"]

    @property
    def n_nodes(self) -> int:
        return self.n_senders + 1

    @property
    def logits_node(self) -> int:
        """Index of ``logits`` in :attr:`nodes`."""
        return self.n_senders

    # ------------------------------------------------------------------ per-layer index ranges
    def head_senders(self, layer: int) -> tuple[int, int]:
        """Sender index range ``[s0, s1)`` of layer ``layer``'s heads."""
        s0 = 1 + layer * (self.n_heads + 1)
        return s0, s0 + self.n_heads

    def mlp_sender(self, layer: int) -> int:
        """Sender index of layer ``layer``'s MLP."""
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def attn_receivers(self, layer: int) -> tuple[int, int]:
        """Receiver index range ``[r0, r1)`` of layer ``layer``'s q/k/v inputs (head-major, q,k,v interleaved)."""
        r0 = layer * (3 * self.n_heads + 1)
        return r0, r0 + 3 * self.n_heads

    def mlp_receiver(self, layer: int) -> int:
        """Receiver index of layer ``layer``'s MLP."""
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    @property
    def logits_receiver(self) -> int:
        return self.n_receivers - 1

    def senders_before_attn(self, layer: int) -> int:
        """How many senders layer ``layer``'s attention reads: ``0 .. n-1`` (input and earlier layers)."""
        return self.head_senders(layer)[0]

    def senders_before_mlp(self, layer: int) -> int:
        """How many senders layer ``layer``'s MLP reads (its own heads too unless the block is parallel)."""
        return self.head_senders(layer)[0] if self.parallel_attn_mlp else self.mlp_sender(layer)

    def qkv_receiver(self, layer: int, head: int | torch.Tensor, slot: int | torch.Tensor) -> int | torch.Tensor:
        """Receiver index of head ``head``'s q/k/v input (``slot`` 0, 1, 2); works elementwise on tensors."""
        return self.attn_receivers(layer)[0] + 3 * head + slot

    def qkv_slot(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split a receiver's index *within its layer's q/k/v range* into ``(head, slot)`` (slot 0/1/2 = q/k/v)."""
        return local // 3, local % 3

    def per_head_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """View a layer's ``[3H, ...]`` per-receiver tensor as ``[H, 3, ...]`` (head, q/k/v slot)."""
        return x.view(self.n_heads, 3, *x.shape[1:])

    def node_groups(self) -> list[tuple[int, int]]:
        """Sender ranges of the node groups EAP-IG-activations interpolates: input, then per layer heads and MLP."""
        groups = [(0, 1)]
        for layer in range(self.n_layers):
            s0, s1 = self.head_senders(layer)
            groups += [(s0, s1), (s1, s1 + 1)]
        return groups

    def node_time(self) -> torch.Tensor:
        """``[N]`` residual-stream stage of every node (senders' write stage; ``logits`` last).

        Every edge goes from a lower stage to a strictly higher one, and nodes of one stage
        have no edges between them, so processing stages in order is a topological sweep.
        """
        return torch.cat([self.sender_time, torch.tensor([2 * self.n_layers + 1])])

    def edge_layer(self, edges: torch.Tensor) -> torch.Tensor:
        """``[n]`` layer at which each edge's receiver reads (``n_layers`` for edges into the logits)."""
        return self.receiver_layer[self.edge_receiver[edges]]

    def edge_node(self, edges: torch.Tensor | None = None) -> torch.Tensor:
        """``[n]`` node index (into :attr:`nodes`) each edge goes into."""
        r = self.edge_receiver if edges is None else self.edge_receiver[edges]
        return self.receiver_node[r]

    # ------------------------------------------------------------------ names
    def edge_names(self, indices: torch.Tensor | Sequence[int] | None = None) -> list[str]:
        """Names ``"sender->receiver"`` of the given edge indices (default: all, in order)."""
        idx = torch.arange(self.n_edges) if indices is None else torch.as_tensor(indices).reshape(-1)
        s, r = self.edge_sender[idx].tolist(), self.edge_receiver[idx].tolist()
        return [f"{self.senders[a]}->{self.receivers[b]}" for a, b in zip(s, r)]

    def sender_index(self, name: str) -> int:
        """Index of a sender node (``input``, ``a3.h5``, ``m7``)."""
        try:
            return self._sender_index[name]  # type: ignore[attr-defined]
        except KeyError:
            raise ValueError(self._unknown("sender node", name)) from None

    def receiver_index(self, name: str) -> int:
        """Index of a receiver (``a3.h5<q>``, ``m7``, ``logits``)."""
        try:
            return self._receiver_index[name]  # type: ignore[attr-defined]
        except KeyError:
            raise ValueError(self._unknown("receiver", name)) from None

    def node_index(self, name: str) -> int:
        """Index of a node into :attr:`nodes`."""
        return self.n_senders if name == "logits" else self.sender_index(name)

    def node_receivers(self, name: str) -> list[int]:
        """Receivers of a node name: a head's q, k and v; an MLP's or the logits' one; or one ``a1.h2<k>``."""
        if _HEAD_RE.match(name):
            self.sender_index(name)
            return [self.receiver_index(f"{name}<{c}>") for c in QKV]
        return [self.receiver_index(name)]

    def edge_index(self, names: str | Sequence[str]) -> torch.Tensor:
        """Edge indices (``[n]`` long) of edge names like ``"a0.h1->a1.h2<k>"``."""
        if isinstance(names, str):
            names = [names]
        s_idx, r_idx = [], []
        for name in names:
            if "->" not in name:
                raise ValueError(f"edge name {name!r} must look like 'a0.h1->a1.h2<k>' or 'input->m0'")
            s, r = name.split("->", 1)
            s_idx.append(self.sender_index(s))
            r_idx.append(self.receiver_index(r))
        s_t, r_t = torch.tensor(s_idx, dtype=torch.long), torch.tensor(r_idx, dtype=torch.long)
        ok = self.valid[s_t, r_t]
        if not bool(ok.all()):
            bad = [names[i] for i in (~ok).nonzero().flatten().tolist()]
            raise ValueError(f"not edges of this graph (the receiver reads the residual before the sender writes): {bad[:5]}")
        return self.edge_table[s_t, r_t]

    def _unknown(self, what: str, name: str) -> str:
        return (
            f"unknown {what} {name!r} for a graph with {self.n_layers} layers x {self.n_heads} heads; "
            "names look like 'input', 'a3.h5', 'm7', 'a3.h5<q>', 'logits'"
        )

    # ------------------------------------------------------------------ masks
    def keep_mask(self, mask: KeepMask | Iterable[str]) -> KeepMask:
        """Normalise a keep-mask to float ``[E]`` or ``[K, E]``: a bool/float tensor, or edge names to keep."""
        if not isinstance(mask, torch.Tensor):
            keep = torch.zeros(self.n_edges)
            keep[self.edge_index(list(mask))] = 1.0
            return keep
        if mask.shape[-1] != self.n_edges or mask.dim() not in (1, 2):
            raise ValueError(
                f"an edge mask must have shape [E] or [K, E] with E = {self.n_edges} edges; got {tuple(mask.shape)}"
            )
        return mask.float()

    def patch_weights(self, keep: KeepMask, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> PatchWeights:
        """Keep-mask(s) ``[E]`` / ``[K, E]`` -> dense corrupted-value weights ``[K, S, R]`` = ``1 - keep`` on edges.

        The only conversion from keep-masks to what the runtime reads; non-edges are 0.
        Differentiable in ``keep`` (gradients flow back to a fractional mask).
        """
        keep = self.keep_mask(keep)
        if keep.dim() == 1:
            keep = keep[None]
        dev = keep.device if device is None else torch.device(device)
        patch = 1.0 - keep.to(device=dev, dtype=dtype or keep.dtype)
        out = torch.zeros(patch.shape[0], self.n_senders, self.n_receivers, dtype=patch.dtype, device=dev)
        out[:, self.edge_sender.to(dev), self.edge_receiver.to(dev)] = patch
        return out

    def to_dense(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Scatter per-edge values ``[..., E]`` into ``[..., S, R]``; non-edges get ``fill``."""
        if values.shape[-1] != self.n_edges:
            raise ValueError(f"expected {self.n_edges} values per edge in the last dim, got shape {tuple(values.shape)}")
        out = torch.full((*values.shape[:-1], self.n_senders, self.n_receivers), fill, dtype=values.dtype, device=values.device)
        out[..., self.edge_sender.to(values.device), self.edge_receiver.to(values.device)] = values
        return out

    def from_dense(self, table: torch.Tensor) -> torch.Tensor:
        """Gather ``[..., S, R]`` into per-edge ``[..., E]``."""
        return table[..., self.edge_sender.to(table.device), self.edge_receiver.to(table.device)]


@functools.lru_cache(maxsize=32)
def layout_for(n_layers: int, n_heads: int, parallel_attn_mlp: bool = False) -> GraphLayout:
    """The (shared, immutable) layout of this shape."""
    return GraphLayout(int(n_layers), int(n_heads), bool(parallel_attn_mlp))


# ---------------------------------------------------------------------- names
def split_receiver(name: str) -> tuple[str, str]:
    """``"a1.h2<k>"`` -> ``("a1.h2", "k")``; ``"m3"`` -> ``("m3", "")``."""
    m = _RECV_RE.match(name)
    if m:
        return f"a{m.group(1)}.h{m.group(2)}", m.group(3)
    return name, ""


def node_layer(name: str) -> int:
    """Layer of a node name; ``input`` is -1 and ``logits`` is a large number."""
    if name == "input":
        return -1
    if name == "logits":
        return 10**9
    m = _HEAD_RE.match(name) or _MLP_RE.match(name)
    if not m:
        raise ValueError(f"not a node name: {name!r}")
    return int(m.group(1))


def head_of(name: str) -> tuple[int, int] | None:
    """``(layer, head)`` of a head name ``a3.h5``, else None."""
    m = _HEAD_RE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def node_attributes(name: str, n_layers: int | None = None) -> dict[str, object]:
    """``kind`` (input/head/mlp/logits), ``layer`` (input -1, logits ``n_layers``) and ``head`` (-1 if none)."""
    if name in ("input", "logits"):
        layer = -1 if name == "input" else (n_layers if n_layers is not None else -2)
        return {"kind": name, "layer": layer, "head": -1}
    hd = head_of(name)
    if hd:
        return {"kind": "head", "layer": hd[0], "head": hd[1]}
    return {"kind": "mlp", "layer": node_layer(name), "head": -1}


def expected_edge_count(n_layers: int, n_heads: int, parallel_attn_mlp: bool = False) -> int:
    """Closed-form edge count (docs/concepts.md), used to check the tensor construction."""
    L, H = n_layers, n_heads
    total = 0
    for layer in range(L):
        upstream = 1 + layer * (H + 1)
        total += 3 * H * upstream + upstream + (0 if parallel_attn_mlp else H)
    return total + 1 + L * (H + 1)
