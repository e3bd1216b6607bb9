"""The edge-level computational graph of a transformer, stored as tensors.

Nodes are ``input`` (token (+ position) embedding), every attention head ``a{l}.h{h}``,
every MLP ``m{l}`` and ``logits``. Every node but ``logits`` *sends* its output into the
residual stream; every head has three *receivers* (``a{l}.h{h}<q>``, ``<k>``, ``<v>``),
each MLP one (``m{l}``) and the logits one (``logits``). An edge is a (sender, receiver)
pair where the receiver reads the residual stream after the sender wrote to it.

Storage is tensors, never per-edge Python objects:

* senders are indexed ``0..S-1`` in topological order, receivers ``0..R-1``;
* ``valid`` is an ``[S, R]`` boolean table of which pairs are edges;
* edges are the ``E`` true entries of ``valid`` in row-major order; ``edge_sender`` and
  ``edge_receiver`` (``[E]`` each) index them; ``scores`` (``[E]`` float32) and ``in_circuit``
  (``[E]`` bool) hold one value per edge.

Edge names follow EAP-IG / MIB: ``"a0.h1->a1.h2<k>"``, ``"input->m0"``, ``"m11->logits"``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from .io import atomic_write_text

FORMAT_NAME = "circuits.graph"
FORMAT_VERSION = 1
QKV = ("q", "k", "v")
_HEAD_RE = re.compile(r"^a(\d+)\.h(\d+)$")
_MLP_RE = re.compile(r"^m(\d+)$")
_RECV_RE = re.compile(r"^a(\d+)\.h(\d+)<([qkv])>$")


@dataclass
class Graph:
    """Edge-level graph of an ``n_layers`` x ``n_heads`` transformer.

    Build with :meth:`Graph.build` (from sizes) or :func:`circuits.models.graph_for`
    (from a model or config). ``scores`` and ``in_circuit`` are the only mutable state.
    """

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    # Derived tables, filled by __post_init__.
    senders: list[str] = field(init=False, repr=False)
    receivers: list[str] = field(init=False, repr=False)
    sender_time: torch.Tensor = field(init=False, repr=False)  # [S] long
    receiver_time: torch.Tensor = field(init=False, repr=False)  # [R] long
    receiver_node: torch.Tensor = field(init=False, repr=False)  # [R] long, index into nodes
    valid: torch.Tensor = field(init=False, repr=False)  # [S, R] bool
    edge_sender: torch.Tensor = field(init=False, repr=False)  # [E] long
    edge_receiver: torch.Tensor = field(init=False, repr=False)  # [E] long
    scores: torch.Tensor = field(init=False, repr=False)  # [E] float32
    in_circuit: torch.Tensor = field(init=False, repr=False)  # [E] bool

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1:
            raise ValueError(f"a graph needs n_layers >= 1 and n_heads >= 1, got {self.n_layers}, {self.n_heads}")
        L, H = self.n_layers, self.n_heads
        # "Time" = the residual-stream stage at which a node writes (senders) or reads (receivers).
        # input writes at 0; layer l's heads at 2l+1, its MLP at 2l+2. Attention of layer l reads
        # stage 2l+1 (everything before it); a sequential MLP reads 2l+2 (it sees layer l's heads),
        # a parallel-residual MLP reads the same stream as its attention; logits read everything.
        senders, s_time = ["input"], [0]
        receivers, r_time, r_node = [], [], []
        for layer in range(L):
            for h in range(H):
                senders.append(f"a{layer}.h{h}")
                s_time.append(2 * layer + 1)
            senders.append(f"m{layer}")
            s_time.append(2 * layer + 2)
        node_index = {n: i for i, n in enumerate(senders)}
        for layer in range(L):
            for h in range(H):
                for c in QKV:
                    receivers.append(f"a{layer}.h{h}<{c}>")
                    r_time.append(2 * layer + 1)
                    r_node.append(node_index[f"a{layer}.h{h}"])
            receivers.append(f"m{layer}")
            r_time.append(2 * layer + 1 if self.parallel_attn_mlp else 2 * layer + 2)
            r_node.append(node_index[f"m{layer}"])
        receivers.append("logits")
        r_time.append(2 * L + 1)
        r_node.append(len(senders))
        self.senders, self.receivers = senders, receivers
        self.sender_time = torch.tensor(s_time)
        self.receiver_time = torch.tensor(r_time)
        self.receiver_node = torch.tensor(r_node)
        self.valid = self.sender_time[:, None] < self.receiver_time[None, :]
        idx = self.valid.nonzero()
        self.edge_sender, self.edge_receiver = idx[:, 0].contiguous(), idx[:, 1].contiguous()
        self.scores = torch.zeros(self.n_edges, dtype=torch.float32)
        self.in_circuit = torch.ones(self.n_edges, dtype=torch.bool)
        self._sender_index = node_index
        self._receiver_index = {n: i for i, n in enumerate(receivers)}

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, n_layers: int, n_heads: int, parallel_attn_mlp: bool = False, **meta: Any) -> "Graph":
        """A fresh graph with zero scores and every edge in the circuit."""
        return cls(n_layers, n_heads, parallel_attn_mlp, dict(meta))

    def copy(self) -> "Graph":
        """A deep copy (scores and circuit mask are cloned)."""
        g = Graph(self.n_layers, self.n_heads, self.parallel_attn_mlp, json.loads(json.dumps(self.meta)))
        g.scores = self.scores.clone()
        g.in_circuit = self.in_circuit.clone()
        return g

    # ------------------------------------------------------------------ sizes and names
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
        return self.senders + ["logits"]

    @property
    def n_nodes(self) -> int:
        return self.n_senders + 1

    def edge_names(self, indices: torch.Tensor | None = None) -> list[str]:
        """Names ``"sender->receiver"`` of the given edge indices (default: all, in order)."""
        idx = torch.arange(self.n_edges) if indices is None else torch.as_tensor(indices).reshape(-1)
        s, r = self.edge_sender[idx].tolist(), self.edge_receiver[idx].tolist()
        return [f"{self.senders[a]}->{self.receivers[b]}" for a, b in zip(s, r)]

    def sender_index(self, name: str) -> int:
        """Index of a sender node (``input``, ``a3.h5``, ``m7``)."""
        try:
            return self._sender_index[name]
        except KeyError:
            raise ValueError(self._unknown("sender node", name)) from None

    def receiver_index(self, name: str) -> int:
        """Index of a receiver (``a3.h5<q>``, ``m7``, ``logits``)."""
        try:
            return self._receiver_index[name]
        except KeyError:
            raise ValueError(self._unknown("receiver", name)) from None

    def node_index(self, name: str) -> int:
        """Index of a node into :attr:`nodes`."""
        return self.n_senders if name == "logits" else self.sender_index(name)

    def edge_index(self, names: str | Sequence[str]) -> torch.Tensor:
        """Edge indices ([n] long) of edge names like ``"a0.h1->a1.h2<k>"``."""
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
        return self.edge_lookup()[s_t, r_t]

    def edge_lookup(self) -> torch.Tensor:
        """``[S, R]`` long table: edge index of each valid pair, -1 elsewhere."""
        table = torch.full((self.n_senders, self.n_receivers), -1, dtype=torch.long)
        table[self.edge_sender, self.edge_receiver] = torch.arange(self.n_edges)
        return table

    def _unknown(self, what: str, name: str) -> str:
        return (
            f"unknown {what} {name!r} for a graph with {self.n_layers} layers x {self.n_heads} heads; "
            "names look like 'input', 'a3.h5', 'm7', 'a3.h5<q>', 'logits'"
        )

    # ------------------------------------------------------------------ tensor views
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

    def edge_mask(self, mask: torch.Tensor | Iterable[str] | None = None) -> torch.Tensor:
        """Normalise a user mask to a float ``[E]`` or ``[K, E]`` tensor.

        Accepts ``None`` (the graph's own ``in_circuit``), a bool/float tensor of E values
        (or K x E for a batch of masks), or an iterable of edge names to keep.
        """
        if mask is None:
            return self.in_circuit.float()
        if not isinstance(mask, torch.Tensor):
            keep = torch.zeros(self.n_edges)
            keep[self.edge_index(list(mask))] = 1.0
            return keep
        if mask.shape[-1] != self.n_edges or mask.dim() not in (1, 2):
            raise ValueError(
                f"an edge mask must have shape [E] or [K, E] with E = {self.n_edges} edges; got {tuple(mask.shape)}"
            )
        return mask.float()

    # ------------------------------------------------------------------ circuit helpers
    @property
    def n_circuit_edges(self) -> int:
        return int(self.in_circuit.sum())

    def node_in_circuit(self) -> torch.Tensor:
        """``[N]`` bool over :attr:`nodes`: a node is in the circuit when an in-circuit edge touches it."""
        out = torch.zeros(self.n_nodes, dtype=torch.bool)
        e = self.in_circuit
        out[self.edge_sender[e]] = True
        out[self.receiver_node[self.edge_receiver[e]]] = True
        return out

    def circuit_nodes(self) -> list[str]:
        """Names of nodes touched by in-circuit edges, in topological order."""
        names = self.nodes
        return [names[i] for i in self.node_in_circuit().nonzero().flatten().tolist()]

    def circuit_edges(self) -> list[str]:
        """Names of in-circuit edges."""
        return self.edge_names(self.in_circuit.nonzero().flatten())

    def set_circuit(self, edges: torch.Tensor | Iterable[str]) -> "Graph":
        """Set ``in_circuit`` from a bool ``[E]`` mask or edge names; returns self."""
        m = self.edge_mask(edges)
        if m.dim() != 1:
            raise ValueError("set_circuit takes a single mask of shape [E]")
        self.in_circuit = m > 0.5
        return self

    # ------------------------------------------------------------------ node-level view
    def node_mask_to_edge_mask(self, keep_nodes: torch.Tensor | Iterable[str]) -> torch.Tensor:
        """Bool ``[E]``: the edges whose sender is a kept node (node-level patching).

        Removing a node in the node-level view corrupts its output for every receiver.
        ``keep_nodes`` is a bool ``[S]`` over senders or an iterable of node names.
        """
        if not isinstance(keep_nodes, torch.Tensor):
            t = torch.zeros(self.n_senders, dtype=torch.bool)
            for n in keep_nodes:
                t[self.sender_index(n)] = True
            keep_nodes = t
        if keep_nodes.shape != (self.n_senders,):
            raise ValueError(f"node mask must have shape [{self.n_senders}] (one per sender node)")
        return keep_nodes.bool()[self.edge_sender]

    def node_scores(self, values: torch.Tensor | None = None, absolute: bool = False) -> torch.Tensor:
        """``[S]`` per-sender-node score: the sum of its outgoing edge scores (|scores| if absolute)."""
        v = self.scores if values is None else values
        v = v.abs() if absolute else v
        return torch.zeros(self.n_senders, dtype=v.dtype).index_add_(0, self.edge_sender, v)

    # ------------------------------------------------------------------ networkx
    def to_networkx(self, circuit_only: bool = False):
        """A ``networkx.MultiDiGraph``: nodes with ``layer``/``kind``, edges keyed by q/k/v input.

        Edge attributes: ``name``, ``input`` (``q``/``k``/``v``/``""``), ``score``, ``in_circuit``.
        """
        import networkx as nx

        g = nx.MultiDiGraph(n_layers=self.n_layers, n_heads=self.n_heads, parallel_attn_mlp=self.parallel_attn_mlp)
        keep_nodes = self.node_in_circuit() if circuit_only else torch.ones(self.n_nodes, dtype=torch.bool)
        for i, n in enumerate(self.nodes):
            if keep_nodes[i]:
                g.add_node(n, **node_attributes(n, self.n_layers))
        idx = self.in_circuit.nonzero().flatten() if circuit_only else torch.arange(self.n_edges)
        names = self.edge_names(idx)
        scores = self.scores[idx].tolist()
        flags = self.in_circuit[idx].tolist()
        for name, sc, fl in zip(names, scores, flags):
            s, r = name.split("->")
            node, inp = split_receiver(r)
            g.add_edge(s, node, key=inp or "in", name=name, input=inp, score=float(sc), in_circuit=bool(fl))
        return g

    @classmethod
    def from_networkx(cls, g) -> "Graph":
        """Inverse of :meth:`to_networkx` (edges absent from ``g`` are out of the circuit, score 0)."""
        graph = cls.build(int(g.graph["n_layers"]), int(g.graph["n_heads"]), bool(g.graph.get("parallel_attn_mlp", False)))
        graph.in_circuit[:] = False
        names, scores, flags = [], [], []
        for s, t, data in g.edges(data=True):
            inp = data.get("input", "")
            names.append(f"{s}->{t}<{inp}>" if inp else f"{s}->{t}")
            scores.append(float(data.get("score", 0.0)))
            flags.append(bool(data.get("in_circuit", True)))
        if names:
            idx = graph.edge_index(names)
            graph.scores[idx] = torch.tensor(scores, dtype=torch.float32)
            graph.in_circuit[idx] = torch.tensor(flags)
        return graph

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """Our versioned JSON schema: structure, metadata, and one ``[name, score, in_circuit]`` per edge."""
        names = self.edge_names()
        scores = self.scores.tolist()
        flags = self.in_circuit.tolist()
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "parallel_attn_mlp": self.parallel_attn_mlp,
            "n_edges": self.n_edges,
            "meta": self.meta,
            "edges": [[n, _json_float(s), bool(f)] for n, s, f in zip(names, scores, flags)],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Graph":
        """Inverse of :meth:`to_dict`; checks the format, version and edge names."""
        if d.get("format") != FORMAT_NAME:
            raise ValueError(f"not a circuits graph file (format={d.get('format')!r}, expected {FORMAT_NAME!r})")
        if int(d.get("version", -1)) > FORMAT_VERSION:
            raise ValueError(f"graph file version {d['version']} is newer than this circuits ({FORMAT_VERSION}); upgrade circuits")
        g = cls.build(int(d["n_layers"]), int(d["n_heads"]), bool(d.get("parallel_attn_mlp", False)))
        g.meta = dict(d.get("meta", {}))
        edges = d["edges"]
        if len(edges) != g.n_edges:
            raise ValueError(f"graph file lists {len(edges)} edges, the structure has {g.n_edges}")
        names = [e[0] for e in edges]
        if names != g.edge_names():
            raise ValueError("edge names in the file do not match the graph structure (edited or corrupted file?)")
        g.scores = torch.tensor([float("nan") if e[1] is None else float(e[1]) for e in edges], dtype=torch.float32)
        g.in_circuit = torch.tensor([bool(e[2]) for e in edges], dtype=torch.bool)
        return g

    def save_json(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write :meth:`to_dict` atomically to ``path``."""
        return atomic_write_text(path, json.dumps(self.to_dict()), overwrite=overwrite)

    @classmethod
    def load_json(cls, path: str | Path) -> "Graph":
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"graph file {p} does not exist")
        return cls.from_dict(json.loads(p.read_text()))

    def __repr__(self) -> str:
        return (
            f"Graph(layers={self.n_layers}, heads={self.n_heads}, parallel={self.parallel_attn_mlp}, "
            f"nodes={self.n_nodes}, edges={self.n_edges}, in_circuit={self.n_circuit_edges})"
        )


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else x


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


def node_attributes(name: str, n_layers: int | None = None) -> dict[str, Any]:
    """``kind`` (input/head/mlp/logits), ``layer`` (input -1, logits ``n_layers``) and ``head`` (-1 if none)."""
    if name in ("input", "logits"):
        layer = -1 if name == "input" else (n_layers if n_layers is not None else -2)
        return {"kind": name, "layer": layer, "head": -1}
    m = _HEAD_RE.match(name)
    if m:
        return {"kind": "head", "layer": int(m.group(1)), "head": int(m.group(2))}
    return {"kind": "mlp", "layer": node_layer(name), "head": -1}


def expected_edge_count(n_layers: int, n_heads: int, parallel_attn_mlp: bool = False) -> int:
    """Closed-form edge count (REFERENCE §1) used to check the tensor construction."""
    L, H = n_layers, n_heads
    total = 0
    for l in range(L):
        upstream = 1 + l * (H + 1)
        total += 3 * H * upstream + upstream + (0 if parallel_attn_mlp else H)
    return total + 1 + L * (H + 1)
