"""The sparse masked forward (circuits/runtime/sparse.py) equals the general patched forward."""

import pytest
import torch
from tiny_models import FAMILIES, POST_NORM_FAMILIES, random_batch, sensitive_llama, tiny_model

from circuits import Patch, TracedModel
from circuits.patching import PatchRunner
from circuits.runtime.node_states import BASE, CHANGED, CORRUPTED, plan_states, supports_sparse
from circuits.runtime.sparse import SparseBase, SparseStats, sparse_logits
from circuits.tasks.base import Batch

TOL = 1e-5


def recorded(tm: TracedModel, clean, corr, mask, at):
    with torch.no_grad():
        c = tm.run(clean, mask, record=True, record_resid=True, logit_positions=at)
        x = tm.run(corr, mask, record=True, record_resid=True, logit_positions=at)
    return SparseBase.from_runs(tm.blocks, mask, at, c, x), x.senders


def layer_masks(tm: TracedModel) -> torch.Tensor:
    """Masks whose layers are wholly clean or corrupted: keep every edge into layer 0 only, into
    every layer but the first, into the logits only; keep every edge from ``input`` only."""
    lay = tm.layout
    rl = lay.receiver_layer[lay.edge_receiver]  # [E] layer each edge goes into
    from_input = (lay.edge_sender == 0).float()
    return torch.stack([(rl == 0).float(), (rl >= 1).float(), (rl == lay.n_layers).float(), from_input])


def all_masks(tm: TracedModel, seed: int = 0) -> torch.Tensor:
    """Random masks at several densities, nested top-k masks, all kept, none kept, layer masks."""
    E = tm.layout.n_edges
    g = torch.Generator().manual_seed(seed)
    rand = (torch.rand(4, E, generator=g) < torch.tensor([0.5, 0.9, 0.05, 0.01])[:, None]).float()
    order = torch.randperm(E, generator=g)
    nested = torch.zeros(4, E)
    for i, n in enumerate((1, E // 100 + 1, E // 10, E // 2)):
        nested[i, order[:n]] = 1.0
    return torch.cat([rand, nested, torch.ones(1, E), torch.zeros(1, E), layer_masks(tm)])


ADDITIVE = [f for f in FAMILIES if f not in POST_NORM_FAMILIES]


@pytest.mark.parametrize("family", ADDITIVE)
def test_sparse_equals_general_patched_forward(family):
    tm = TracedModel(tiny_model(family))
    clean, corr, mask = random_batch(B=3, P=9)  # left-padded rows 1 and 2
    at = torch.tensor([8, 8, 8])
    base, reference = recorded(tm, clean, corr, mask, at)
    keep = all_masks(tm)
    stats = SparseStats()
    sparse = sparse_logits(tm.blocks, tm.layout, base, keep, stats)
    with torch.no_grad():
        general = tm.run(clean, mask, patch=Patch(keep, reference), logit_positions=at).logits
    assert sparse.shape == general.shape
    assert (sparse - general).abs().max() <= TOL
    cols = torch.tensor([7, 0, 3])  # a few logits only: recorded (all kept, none kept) and computed ones alike
    assert (sparse_logits(tm.blocks, tm.layout, base, keep, columns=cols) - general[..., cols]).abs().max() <= TOL
    # the masks do change the output: an error in what the sparse path recomputes would show
    assert (general.view(len(keep), 3, -1) - base.base_logits.view(1, 3, -1)).abs().amax((1, 2)).max() > 1e-3
    assert 0 < stats.heads < stats.total_heads
    assert 0 < stats.at_answer < stats.heads + stats.mlps  # some nodes are read at the answer positions only


@pytest.mark.parametrize("family", ["gpt2", "llama", "gptj"])
def test_sparse_inputs_by_rows_and_by_matmul_agree(family, monkeypatch):
    """The sparse forward's receiver inputs summed by rows (every sum forced there) and by the per-position
    matmul (forced there) both equal the general patched forward."""
    from circuits.runtime import position_sums

    tm = TracedModel(tiny_model(family))
    clean, corr, mask = random_batch(B=3, P=9)
    at = torch.tensor([8, 8, 8])
    base, reference = recorded(tm, clean, corr, mask, at)
    keep = all_masks(tm)
    with torch.no_grad():
        general = tm.run(clean, mask, patch=Patch(keep, reference), logit_positions=at).logits
    for share in (0.0, 1.0):
        monkeypatch.setattr(position_sums, "SPARSE_SHARE", share)
        assert (sparse_logits(tm.blocks, tm.layout, base, keep) - general).abs().max() <= TOL


def test_sparse_store_from_a_workspace_gives_the_same_logits():
    """The store taken from a loop's workspace (garbage from an earlier call in it) changes nothing."""
    from circuits.runtime import Workspace

    tm = TracedModel(tiny_model("llama"))
    clean, corr, mask = random_batch(B=3, P=9)
    at = torch.tensor([8, 8, 8])
    base, _ = recorded(tm, clean, corr, mask, at)
    keep = all_masks(tm)
    fresh = sparse_logits(tm.blocks, tm.layout, base, keep)
    ws = Workspace()
    ws.empty("sparse store", (10**6,), base.delta.dtype, base.delta.device).fill_(float("nan"))
    for masks in (keep, keep[:3], keep):  # a larger, a smaller, then the larger store again
        out = sparse_logits(tm.blocks, tm.layout, base, masks, workspace=ws)
        assert (out - fresh[:len(out)]).abs().max() <= TOL


def test_states_of_simple_masks():
    tm = TracedModel(tiny_model("gpt2"))
    lay = tm.layout
    E = lay.n_edges
    plan = plan_states(lay, torch.stack([torch.ones(E), torch.zeros(E)]))
    assert bool((plan.senders[0] == BASE).all()) and bool((plan.receivers[0] == BASE).all())
    assert bool((plan.senders[1, 1:] == CORRUPTED).all()) and int(plan.senders[1, 0]) == BASE  # input is clean
    # edges into layer 0 only: layer 0 clean, then every later receiver reads corrupted values only
    # except through removed edges from clean senders -> corrupted
    plan = plan_states(lay, layer_masks(tm)[:1])
    s0, s1 = lay.head_senders(0)
    assert bool((plan.senders[0, s0:s1] == BASE).all())
    assert bool((plan.senders[0, lay.head_senders(1)[0]:] == CORRUPTED).all())
    # one edge a0.h0 -> a1.h1<k> kept: nothing but input is clean, so a1.h1 reads corrupted values
    keep = torch.zeros(1, E)
    keep[0, lay.edge_index("input->a0.h0<q>")] = 1
    plan = plan_states(lay, keep)
    assert int(plan.senders[0, lay.sender_index("a0.h0")]) == CHANGED
    assert int(plan.changed_nodes()[0]) == 1
    assert int(plan.computed_nodes()[0]) == 0  # nothing reads a0.h0 through a kept edge


def test_sparse_computes_only_what_the_circuit_touches():
    """A regression to 'compute every node for every mask' fails here."""
    tm = TracedModel(tiny_model("gpt2"))
    lay = tm.layout
    clean, corr, mask = random_batch(B=2, P=7)
    at = torch.tensor([6, 6])
    base, reference = recorded(tm, clean, corr, mask, at)
    keep = torch.zeros(2, lay.n_edges)
    keep[0, lay.edge_index(["input->a0.h1<v>", "a0.h1->m1", "m1->logits"])] = 1  # a0.h1, m1, logits change
    keep[1, lay.edge_index(["input->m0"])] = 1  # m0 changes, but no kept edge reads it: corrupted logits
    stats = SparseStats()
    out = sparse_logits(tm.blocks, lay, base, keep, stats)
    assert plan_states(lay, keep).changed_nodes().tolist() == [3, 1]  # a0.h1, m1, logits; m0
    assert (stats.heads, stats.mlps, stats.logits) == (1, 1, 1)  # m0 is not read: not computed
    assert stats.at_answer == 2  # a0.h1 (its value input at every position) and m1 only feed the logits
    with torch.no_grad():
        general = tm.run(clean, mask, patch=Patch(keep, reference), logit_positions=at).logits
    assert (out - general).abs().max() <= TOL


def batch_of(clean, corr, mask, P):
    B = len(clean)
    g = torch.Generator().manual_seed(3)
    return Batch(clean, corr, mask, torch.randint(0, 97, (B, 1), generator=g), torch.randint(0, 97, (B, 1), generator=g),
                 torch.full((B,), P - 1))


@pytest.mark.parametrize("ablation", ["patching", "mean"])
def test_runner_sparse_equals_general(ablation):
    """PatchRunner.evaluate with and without the sparse path: KL and logit difference agree; mean
    ablation falls back to the general path (nothing counted)."""
    model = sensitive_llama()
    clean, corr, mask = random_batch(B=4, P=8)
    b = batch_of(clean, corr, mask, 8)
    kw = dict(ablation=ablation, max_rows=12)  # 3 masks per forward: several chunks
    fast = PatchRunner(model, [b], "kl_div", sparse=True, **kw)
    slow = PatchRunner(model, [b], "kl_div", sparse=False, **kw)
    keep = all_masks(fast.tm, seed=1)
    keep = torch.cat([keep, 0.5 * keep[:1]])  # a fractional mask: the general path
    metrics = {"kl": "kl_div", "ld": "logit_diff"}
    a, c = fast.evaluate(keep, metrics), slow.evaluate(keep, metrics)
    for k in metrics:
        assert torch.allclose(a[k], c[k], atol=1e-5, rtol=1e-5)
    assert float(a["kl"].max()) > 1e-2  # the metric sees the masks
    if ablation == "patching":
        assert 0 < fast.sparse_stats.masks <= len(keep) - 1  # not the fractional one
    else:
        assert fast.sparse_stats.masks == 0
    assert slow.sparse_stats.masks == 0


def test_adapter_must_opt_in():
    """A family derived from an opted-in one falls back until it declares additive_residual itself."""
    from circuits.models.llama import LlamaAdapter

    class PostNorm(LlamaAdapter):
        pass

    tm = TracedModel(tiny_model("llama"))
    assert supports_sparse(tm.adapter)
    assert not supports_sparse(PostNorm(tm.model))


@pytest.mark.parametrize("family", FAMILIES)
def test_exactly_the_additive_families_take_the_sparse_path(family):
    """Post-norm families (head outputs not additive) fall back to the general patched forward."""

    assert supports_sparse(TracedModel(tiny_model(family)).adapter) == (family not in POST_NORM_FAMILIES)


def near(base: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` masks that each flip one random edge of ``base`` (kept -> removed or removed -> kept)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(base), generator=g)[:n]
    out = base.repeat(n, 1)
    out[torch.arange(n), idx] = 1 - out[torch.arange(n), idx]
    return out


@pytest.mark.parametrize("family", ADDITIVE)
def test_rebased_sparse_equals_general_patched_forward(family):
    """Rebased on a circuit, the sparse forward still equals the general one for masks near that circuit,
    far from it, all kept and none kept, and rebasing a rebased base changes nothing either."""
    tm = TracedModel(tiny_model(family))
    lay = tm.layout
    clean, corr, mask = random_batch(B=3, P=9)
    at = torch.tensor([8, 8, 8])
    base, reference = recorded(tm, clean, corr, mask, at)
    g = torch.Generator().manual_seed(5)
    circuit = (torch.rand(lay.n_edges, generator=g) < 0.3).float()
    second = circuit * (torch.rand(lay.n_edges, generator=g) < 0.8).float()
    for rebased, centre in ((base.rebase(tm.blocks, lay, circuit), circuit),
                            (base.rebase(tm.blocks, lay, circuit).rebase(tm.blocks, lay, second), second)):
        keep = torch.cat([centre[None], near(centre, 12, 1), all_masks(tm)])
        stats = SparseStats()
        sparse = sparse_logits(tm.blocks, lay, rebased, keep, stats)
        with torch.no_grad():
            general = tm.run(clean, mask, patch=Patch(keep, reference), logit_positions=at).logits
        assert (sparse - general).abs().max() <= TOL
        assert (rebased.base_logits - general[:3]).abs().max() <= TOL  # the base run is the circuit's
        # single flips compute less than the same masks relative to the clean run
        light = SparseStats()
        sparse_logits(tm.blocks, lay, rebased, near(centre, 12, 1), light)
        heavy = SparseStats()
        sparse_logits(tm.blocks, lay, base, near(centre, 12, 1), heavy)
        assert light.heads + light.mlps < heavy.heads + heavy.mlps


def test_masks_that_change_almost_every_node_take_the_general_path():
    """Cost-based dispatch: a mask that makes more than DENSE_SHARE of the nodes computed goes to the general
    patched forward, a mask of a few edges stays sparse; the values are the same either way."""
    model = sensitive_llama()
    clean, corr, mask = random_batch(B=4, P=8)
    b = batch_of(clean, corr, mask, 8)
    runner = PatchRunner(model, [b], "kl_div", max_rows=64)
    lay = runner.layout
    g = torch.Generator().manual_seed(2)
    half = (torch.rand(lay.n_edges, generator=g) < 0.8).float()
    few = torch.zeros(lay.n_edges)
    few[lay.edge_index(["input->a0.h1<v>", "a0.h1->m1", "m1->logits"])] = 1
    keep = torch.stack([half, few])
    heavy, light = plan_states(lay, keep).computed_nodes().tolist()
    assert heavy > light
    runner.DENSE_SHARE = (heavy + light) / 2 / lay.n_senders  # (a tiny graph: the default would send both one way)
    mixed = runner.evaluate(keep)["m"]
    assert runner.sparse_stats.masks == 1  # only `few` took the sparse path
    runner.DENSE_SHARE = 1.0  # everything sparse
    assert torch.allclose(runner.evaluate(keep)["m"], mixed, atol=1e-6)
    assert runner.sparse_stats.masks == 3
    general = PatchRunner(model, [b], "kl_div", sparse=False).evaluate(keep)["m"]
    assert torch.allclose(general, mixed, atol=1e-6)
