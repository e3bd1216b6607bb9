"""The edge-level computational graph of a transformer, with one score and one circuit flag per edge.

Nodes are ``input`` (token (+ position) embedding), every attention head ``a{l}.h{h}``,
every MLP ``m{l}`` and ``logits``. Every node but ``logits`` *sends* its output into the
residual stream; every head has three *receivers* (``a{l}.h{h}<q>``, ``<k>``, ``<v>``),
each MLP one (``m{l}``) and the logits one (``logits``). An edge is a (sender, receiver)
pair where the receiver reads the residual stream after the sender wrote to it. The
indexing lives in :class:`~circuits.graph.layout.GraphLayout`.

A :class:`Graph` is a value: its layout (shared and immutable), ``scores`` (``[E]`` float32),
``in_circuit`` (``[E]`` bool) and a typed :class:`~circuits.graph.provenance.Provenance`.
Steps of the pipeline return new graphs (:meth:`Graph.with_scores`,
:meth:`Graph.with_circuit`); none changes the graph it was given.

Edge names follow EAP-IG / MIB: ``"a0.h1->a1.h2<k>"``, ``"input->m0"``, ``"m11->logits"``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write_text
from .layout import GraphLayout, KeepMask, layout_for, node_attributes, split_receiver
from .provenance import Provenance, Selection

FORMAT_NAME = "circuits.graph"
FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class Graph:
    """Scores and a circuit over a :class:`GraphLayout`.

    Build with :meth:`Graph.build` (from sizes) or :func:`circuits.models.graph_for` (from a
    model or config). Treat it as a value: derive new graphs with :meth:`with_scores` and
    :meth:`with_circuit` instead of writing into the tensors.
    """

    layout: GraphLayout
    scores: torch.Tensor  # [E] float32
    in_circuit: torch.Tensor  # [E] bool
    provenance: Provenance = Provenance()

    def __post_init__(self) -> None:
        E = self.layout.n_edges
        if self.scores.shape != (E,) or self.in_circuit.shape != (E,):
            raise ValueError(
                f"scores and in_circuit must have shape [{E}], got {tuple(self.scores.shape)} and {tuple(self.in_circuit.shape)}"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, n_layers: int, n_heads: int, parallel_attn_mlp: bool = False,
              provenance: Provenance | None = None) -> Graph:
        """A graph with zero scores and every edge in the circuit."""
        layout = layout_for(n_layers, n_heads, parallel_attn_mlp)
        E = layout.n_edges
        return cls(layout, torch.zeros(E), torch.ones(E, dtype=torch.bool), provenance or Provenance())

    def with_scores(self, scores: torch.Tensor, **provenance: Any) -> Graph:
        """A new graph with these ``[E]`` scores (every edge in the circuit) and provenance fields updated."""
        E = self.n_edges
        return Graph(self.layout, scores.detach().float().cpu().reshape(E).clone(), torch.ones(E, dtype=torch.bool),
                     self.provenance.replace(selection=None, faithfulness=None, **provenance))

    def with_circuit(self, keep: KeepMask | Iterable[str], selection: Selection | None = None) -> Graph:
        """A new graph with the same scores and ``in_circuit`` from a bool ``[E]`` mask or edge names."""
        m = self.layout.keep_mask(keep)
        if m.dim() != 1:
            raise ValueError("a circuit is a single mask of shape [E]")
        return Graph(self.layout, self.scores.clone(), (m > 0.5).cpu(),
                     self.provenance.replace(selection=selection, faithfulness=None))

    def with_provenance(self, **changes: Any) -> Graph:
        """The same scores and circuit with provenance fields changed."""
        return dataclasses.replace(self, provenance=self.provenance.replace(**changes))

    def copy(self) -> Graph:
        """A copy with cloned tensors."""
        return Graph(self.layout, self.scores.clone(), self.in_circuit.clone(), self.provenance)

    # ------------------------------------------------------------------ layout, delegated
    n_layers = property(lambda self: self.layout.n_layers, doc="number of layers")
    n_heads = property(lambda self: self.layout.n_heads, doc="attention heads per layer")
    parallel_attn_mlp = property(lambda self: self.layout.parallel_attn_mlp, doc="MLP reads the attention's input")
    senders = property(lambda self: self.layout.senders, doc="sender names in topological order")
    receivers = property(lambda self: self.layout.receivers, doc="receiver names")
    nodes = property(lambda self: self.layout.nodes, doc="node names: senders, then logits")
    n_senders = property(lambda self: self.layout.n_senders)
    n_receivers = property(lambda self: self.layout.n_receivers)
    n_nodes = property(lambda self: self.layout.n_nodes)
    n_edges = property(lambda self: self.layout.n_edges)
    edge_sender = property(lambda self: self.layout.edge_sender, doc="[E] sender index of every edge")
    edge_receiver = property(lambda self: self.layout.edge_receiver, doc="[E] receiver index of every edge")
    receiver_node = property(lambda self: self.layout.receiver_node, doc="[R] node index of every receiver")
    valid = property(lambda self: self.layout.valid, doc="[S, R] bool: which pairs are edges")

    def edge_names(self, indices: torch.Tensor | Sequence[int] | None = None) -> list[str]:
        """Names ``"sender->receiver"`` of the given edge indices (default: all, in order)."""
        return self.layout.edge_names(indices)

    def edge_index(self, names: str | Sequence[str]) -> torch.Tensor:
        """Edge indices (``[n]`` long) of edge names."""
        return self.layout.edge_index(names)

    def sender_index(self, name: str) -> int:
        return self.layout.sender_index(name)

    def receiver_index(self, name: str) -> int:
        return self.layout.receiver_index(name)

    def node_index(self, name: str) -> int:
        return self.layout.node_index(name)

    def same_shape(self, other: Graph | GraphLayout) -> bool:
        """Whether ``other`` has this graph's layout (same layers, heads and block kind)."""
        layout = other.layout if isinstance(other, Graph) else other
        return layout.shape == self.layout.shape

    # ------------------------------------------------------------------ circuit helpers
    @property
    def n_circuit_edges(self) -> int:
        return int(self.in_circuit.sum())

    def keep_mask(self) -> KeepMask:
        """The circuit as a float keep-mask ``[E]``."""
        return self.in_circuit.float()

    def node_in_circuit(self) -> torch.Tensor:
        """``[N]`` bool over :attr:`nodes`: a node is in the circuit when an in-circuit edge touches it."""
        out = torch.zeros(self.n_nodes, dtype=torch.bool)
        e = self.in_circuit
        out[self.edge_sender[e]] = True
        out[self.layout.edge_node()[e]] = True
        return out

    def circuit_nodes(self) -> list[str]:
        """Names of nodes touched by in-circuit edges, in topological order."""
        names = self.nodes
        return [names[i] for i in self.node_in_circuit().nonzero().flatten().tolist()]

    def circuit_edges(self) -> list[str]:
        """Names of in-circuit edges."""
        return self.edge_names(self.in_circuit.nonzero().flatten())

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
        """A ``networkx.MultiDiGraph``: nodes with ``layer``/``kind``/``head``, edges keyed by q/k/v input.

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
    def from_networkx(cls, g, provenance: Provenance | None = None, *, layout: GraphLayout | None = None,
                      as_float: Callable[[Any], float] = float, as_bool: Callable[[Any], bool] = bool) -> Graph:
        """Inverse of :meth:`to_networkx` (edges absent from ``g`` are out of the circuit, score 0).

        ``layout`` defaults to the sizes in ``g.graph``; ``as_float`` / ``as_bool`` read the ``score`` and
        ``in_circuit`` attributes (file readers pass lenient parsers for text values).
        """
        names, scores, flags = [], [], []
        for s, t, data in g.edges(data=True):
            inp = data.get("input") or ""
            names.append(str(data.get("name") or (f"{s}->{t}<{inp}>" if inp else f"{s}->{t}")))
            scores.append(as_float(data.get("score", 0.0)))
            flags.append(as_bool(data.get("in_circuit", True)))
        if layout is None:
            h = g.graph
            layout = layout_for(int(h["n_layers"]), int(h["n_heads"]), bool(h.get("parallel_attn_mlp", False)))
        return cls.from_edges(layout, names, scores, flags, provenance)

    @classmethod
    def from_edges(cls, layout: GraphLayout, names: Sequence[str], scores: Sequence[float], flags: Sequence[bool],
                   provenance: Provenance | None = None) -> Graph:
        """A graph where the listed edges have these scores and flags; unlisted edges score 0, out of the circuit."""
        s = torch.zeros(layout.n_edges)
        keep = torch.zeros(layout.n_edges, dtype=torch.bool)
        if names:
            idx = layout.edge_index(list(names))
            s[idx] = torch.tensor(list(scores), dtype=torch.float32)
            keep[idx] = torch.tensor(list(flags), dtype=torch.bool)
        return cls(layout, s, keep, provenance or Provenance())

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """Our versioned JSON schema: structure, provenance (``meta``), one ``[name, score, in_circuit]`` per edge."""
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
            "meta": self.provenance.to_dict(),
            "edges": [[n, _json_float(s), bool(f)] for n, s, f in zip(names, scores, flags)],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Graph:
        """Inverse of :meth:`to_dict`; checks the format, version and edge names."""
        if not isinstance(d, dict):
            raise ValueError(f"not a circuits graph file (a JSON {type(d).__name__}, expected an object)")
        if d.get("format") != FORMAT_NAME:
            raise ValueError(f"not a circuits graph file (format={d.get('format')!r}, expected {FORMAT_NAME!r})")
        if int(d.get("version", -1)) > FORMAT_VERSION:
            raise ValueError(f"graph file version {d['version']} is newer than this circuits ({FORMAT_VERSION}); upgrade circuits")
        for k in ("n_layers", "n_heads", "edges"):
            if k not in d:
                raise ValueError(f"not a valid circuits graph file: {k!r} is missing")
        layout = layout_for(int(d["n_layers"]), int(d["n_heads"]), bool(d.get("parallel_attn_mlp", False)))
        edges = d["edges"]
        if not isinstance(edges, list) or len(edges) != layout.n_edges:
            n = len(edges) if isinstance(edges, list) else "no list of"
            raise ValueError(f"graph file lists {n} edges, the structure has {layout.n_edges}")
        if any(not isinstance(e, (list, tuple)) or len(e) != 3 for e in edges):
            raise ValueError("not a valid circuits graph file: every edge must be [name, score, in_circuit]")
        if [e[0] for e in edges] != layout.edge_names():
            raise ValueError("edge names in the file do not match the graph structure (edited or corrupted file?)")
        scores = torch.tensor([float("nan") if e[1] is None else float(e[1]) for e in edges], dtype=torch.float32)
        flags = torch.tensor([bool(e[2]) for e in edges], dtype=torch.bool)
        return cls(layout, scores, flags, Provenance.from_dict(d.get("meta")))

    def save_json(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write :meth:`to_dict` atomically to ``path``."""
        return atomic_write_text(path, json.dumps(self.to_dict()), overwrite=overwrite)

    @classmethod
    def load_json(cls, path: str | Path) -> Graph:
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
