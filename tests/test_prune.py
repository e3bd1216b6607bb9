"""Selecting circuits from scores: top-n, threshold, top-fraction, greedy, dangling-edge removal."""

import heapq
from collections import defaultdict

import pytest
import torch

from circuits.circuit.prune import dangling_mask, greedy, remove_dangling, threshold, top_fraction, topn, topn_masks
from circuits.graph import Graph, Selection

SHAPES = [(1, 1, False), (2, 2, False), (3, 2, True), (2, 3, False)]


# ------------------------------------------------------------------------------------------ references
def _edges(g: Graph):
    """(edge index, sender node, receiver node) triples as plain Python ints."""
    rn = g.receiver_node[g.edge_receiver].tolist()
    return list(zip(range(g.n_edges), g.edge_sender.tolist(), rn))


def on_path_reference(g: Graph, keep: torch.Tensor) -> torch.Tensor:
    """Edges of ``keep`` on some input -> logits path, by explicit graph search (BFS both ways)."""
    out_adj, in_adj = defaultdict(list), defaultdict(list)
    for e, u, v in _edges(g):
        if keep[e]:
            out_adj[u].append(v)
            in_adj[v].append(u)

    def reach(start, adj):
        seen, todo = {start}, [start]
        while todo:
            x = todo.pop()
            for y in adj[x]:
                if y not in seen:
                    seen.add(y)
                    todo.append(y)
        return seen

    from_input, to_logits = reach(0, out_adj), reach(g.n_senders, in_adj)
    return torch.tensor([bool(keep[e]) and u in from_input and v in to_logits for e, u, v in _edges(g)])


def eap_ig_prune_reference(g: Graph, keep: torch.Tensor) -> torch.Tensor:
    """EAP-IG's ``prune()`` loop: drop nodes lacking a kept in- or out-edge, drop their edges, repeat."""
    keep = keep.clone()
    edges = _edges(g)
    while True:
        has_out, has_in = set(), {0}  # input always counts as having incoming edges
        for e, u, v in edges:
            if keep[e]:
                has_out.add(u)
                has_in.add(v)
        alive = (has_out & has_in) | {g.n_senders}  # logits always present
        new = keep.clone()
        for e, u, v in edges:
            if keep[e] and not (u in alive and v in alive):
                new[e] = False
        if torch.equal(new, keep):
            return keep
        keep = new


def greedy_reference(g: Graph, n: int, absolute: bool) -> torch.Tensor:
    """EAP-IG's ``apply_greedy`` with a heap (ties: lower edge index first)."""
    s = g.scores.abs() if absolute else g.scores
    incoming = defaultdict(list)
    for e, u, v in _edges(g):
        incoming[v].append(e)
    heap = [(-float(s[e]), e) for e in incoming[g.n_senders]]
    heapq.heapify(heap)
    keep = torch.zeros(g.n_edges, dtype=torch.bool)
    in_graph = {g.n_senders}
    for _ in range(n):
        _, e = heapq.heappop(heap)
        keep[e] = True
        u = int(g.edge_sender[e])
        if u not in in_graph:
            in_graph.add(u)
            for f in incoming[u]:
                heapq.heappush(heap, (-float(s[f]), f))
    return keep


def circuit(g: Graph, names):
    return g.with_circuit(names)


# ------------------------------------------------------------------------------------------ dangling
@pytest.mark.parametrize("shape", SHAPES)
def test_dangling_removal_keeps_exactly_the_edges_on_input_logits_paths(shape):
    g = Graph.build(*shape)
    gen = torch.Generator().manual_seed(sum(shape) + 7)
    for density in (0.02, 0.05, 0.1, 0.2, 0.4, 0.8):
        for _ in range(6):
            keep = torch.rand(g.n_edges, generator=gen) < density
            got = dangling_mask(g, keep)
            ref = on_path_reference(g, keep)
            # every kept edge on an input -> logits path survives; every survivor lies on one
            assert torch.equal(got, ref), (density, g.edge_names((got ^ ref).nonzero().flatten()))
            assert torch.equal(got, eap_ig_prune_reference(g, keep))
            assert not bool((got & ~keep).any())  # never adds edges
            assert torch.equal(dangling_mask(g, got), got)  # idempotent


def test_edge_into_node_without_outgoing_edges_is_removed():
    g = remove_dangling(circuit(Graph.build(2, 2), ["input->a0.h0<q>", "input->logits"]))
    assert g.circuit_edges() == ["input->logits"]


def test_edge_out_of_node_without_incoming_edges_is_removed():
    g = remove_dangling(circuit(Graph.build(2, 2), ["a0.h0->logits", "m1->logits", "input->m1"]))
    assert sorted(g.circuit_edges()) == ["input->m1", "m1->logits"]


def test_chains_collapse_and_survive_as_a_whole():
    base = Graph.build(2, 2)
    chain = ["input->a0.h0<v>", "a0.h0->m0", "m0->a1.h1<k>", "a1.h1->logits"]
    g = remove_dangling(circuit(base, chain))
    assert sorted(g.circuit_edges()) == sorted(chain)
    # cut the chain's last link: everything upstream dangles, repeatedly
    g = remove_dangling(circuit(base, chain[:-1]))
    assert g.circuit_edges() == []
    # cut the first link: everything downstream has no input
    g = remove_dangling(circuit(base, chain[1:]))
    assert g.circuit_edges() == []
    # a side branch from a node without inputs dies, the main chain survives
    g = remove_dangling(circuit(base, chain + ["a0.h1->m1", "m1->logits"]))
    assert sorted(g.circuit_edges()) == sorted(chain)
    # any one of q, k, v counts as an incoming edge of a head
    g = remove_dangling(circuit(base, ["input->a1.h0<k>", "a1.h0->logits"]))
    assert g.n_circuit_edges == 2


def test_remove_dangling_returns_a_new_graph():
    g = circuit(Graph.build(2, 2), ["input->a0.h0<q>"])
    pruned = remove_dangling(g)
    assert pruned is not g and pruned.n_circuit_edges == 0
    assert g.n_circuit_edges == 1


# ------------------------------------------------------------------------------------------ selection rules
def scored(names_scores, shape=(2, 2)):
    g = Graph.build(*shape)
    for name, s in names_scores.items():
        g.scores[g.edge_index(name)] = s
    return g


def test_topn_keeps_the_n_best_and_prunes():
    g = scored({"input->logits": 5.0, "a1.h0->logits": -4.0, "input->a1.h0<q>": 3.0, "a0.h0->m0": 2.5, "m1->logits": 1.0})
    c = topn(g, 3, absolute=True, prune=False)
    assert sorted(c.circuit_edges()) == ["a1.h0->logits", "input->a1.h0<q>", "input->logits"]
    c = topn(g, 3, absolute=False, prune=False)  # signed: the -4 edge drops out
    assert sorted(c.circuit_edges()) == ["a0.h0->m0", "input->a1.h0<q>", "input->logits"]
    c = topn(g, 3, absolute=False, prune=True)  # a0.h0->m0 dangles, input->a1.h0<q> too (a1.h0 has no output)
    assert c.circuit_edges() == ["input->logits"]
    assert c.provenance.selection == Selection(rule="topn", n=3, absolute=False, prune=True)
    assert topn(g, 0).n_circuit_edges == 0
    assert topn(g, g.n_edges, prune=False).n_circuit_edges == g.n_edges
    assert topn(g, g.n_edges).n_circuit_edges == g.n_edges  # the full graph has no dangling edges
    for bad in (-1, g.n_edges + 1, 2.5):
        with pytest.raises(ValueError, match="n must"):
            c = topn(g, bad)


def test_topn_breaks_ties_by_edge_index():
    g = Graph.build(2, 2)
    g.scores[:] = 1.0
    c = topn(g, 4, prune=False)
    assert c.in_circuit.nonzero().flatten().tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("absolute", [True, False])
def test_topn_masks_equal_topn_on_copies(absolute):
    g = Graph.build(3, 2)
    g = g.with_scores(torch.randn(g.n_edges, generator=torch.Generator().manual_seed(1)).round(decimals=1))  # with ties
    ns = [0, 1, 5, 20, 60, g.n_edges]
    before = g.in_circuit.clone()
    for prune in (True, False):
        masks = topn_masks(g, ns, absolute, prune)
        for n, m in zip(ns, masks):
            assert torch.equal(m, topn(g, n, absolute, prune).in_circuit)
    assert torch.equal(g.in_circuit, before)


def test_threshold_is_inclusive_and_respects_sign():
    g = scored({"input->logits": 2.0, "a1.h0->logits": -2.0, "input->a1.h0<q>": 1.0, "m1->logits": 0.5})
    c = threshold(g, 1.0, absolute=True, prune=False)
    assert sorted(c.circuit_edges()) == ["a1.h0->logits", "input->a1.h0<q>", "input->logits"]
    c = threshold(g, 1.0, absolute=False, prune=False)
    assert sorted(c.circuit_edges()) == ["input->a1.h0<q>", "input->logits"]
    c = threshold(g, 1.0, absolute=True, prune=True)
    assert sorted(c.circuit_edges()) == ["a1.h0->logits", "input->a1.h0<q>", "input->logits"]
    c = threshold(g, 1.0, absolute=False, prune=True)  # a1.h0 lost its output edge
    assert c.circuit_edges() == ["input->logits"]


def test_top_fraction_counts_and_bounds():
    g = Graph.build(2, 2)
    g = g.with_scores(torch.arange(g.n_edges, dtype=torch.float32))
    for k in (0.001, 0.1, 0.5, 1.0):
        c = top_fraction(g, k, prune=False)
        assert c.n_circuit_edges == int(k * g.n_edges)
        assert c.provenance.selection.rule == "top_fraction"
    for k in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            c = top_fraction(g, k)


def test_greedy_grows_from_the_logits():
    g = scored({"a0.h0->m0": 10.0, "a1.h0->logits": 5.0, "a0.h1->a1.h0<v>": 4.0, "m1->logits": 3.0,
                "input->a1.h0<q>": 0.5, "input->a0.h1<k>": 0.25})
    # a0.h0->m0 (10) is never reachable: m0 does not enter the circuit
    c = greedy(g, 2, prune=False)
    assert sorted(c.circuit_edges()) == ["a0.h1->a1.h0<v>", "a1.h0->logits"]
    c = greedy(g, 2, prune=True)  # a0.h1 has no inputs yet: the whole chain dangles
    assert c.circuit_edges() == []
    c = greedy(g, 3, prune=False)
    assert sorted(c.circuit_edges()) == ["a0.h1->a1.h0<v>", "a1.h0->logits", "m1->logits"]
    c = greedy(g, 5, prune=True)
    assert sorted(c.circuit_edges()) == ["a0.h1->a1.h0<v>", "a1.h0->logits", "input->a0.h1<k>", "input->a1.h0<q>"]
    with pytest.raises(ValueError, match="n must"):
        c = greedy(g, g.n_edges + 1)


@pytest.mark.parametrize("absolute", [True, False])
def test_greedy_matches_heap_reference(absolute):
    g = Graph.build(3, 2)
    gen = torch.Generator().manual_seed(3)
    g = g.with_scores(torch.randn(g.n_edges, generator=gen))
    for n in (1, 7, 40, g.n_edges):
        assert torch.equal(greedy(g, n, absolute, prune=False).in_circuit, greedy_reference(g, n, absolute))
        assert torch.equal(greedy(g, n, absolute).in_circuit, on_path_reference(g, greedy_reference(g, n, absolute)))


def test_nan_scores_are_named():
    g = Graph.build(2, 2)
    g.scores[g.edge_index(["input->m1", "a0.h1->logits"])] = float("nan")
    for fn, arg in ((topn, 3), (threshold, 0.1), (top_fraction, 0.5), (greedy, 3)):
        with pytest.raises(ValueError, match=r"2 edge score\(s\) are NaN.*input->m1.*a0.h1->logits"):
            fn(g, arg)


def test_selection_returns_new_graphs_and_leaves_the_input_alone():
    g = Graph.build(2, 2)
    g = g.with_scores(torch.randn(g.n_edges, generator=torch.Generator().manual_seed(0)))
    before = g.scores.clone()
    for fn, arg in ((topn, 5), (threshold, 0.5), (top_fraction, 0.3), (greedy, 5)):
        c = fn(g, arg)
        assert c is not g and torch.equal(c.scores, before)
        assert torch.equal(g.scores, before) and bool(g.in_circuit.all())
