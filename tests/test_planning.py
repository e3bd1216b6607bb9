"""The memory planner: graph counts and parameter counts from configs, size parsing, the estimate's parts
against the tensors the code allocates, the batch / max_rows choice, and the CLI (`circuits plan`, --max-memory).

The estimate-vs-measured-peak comparison runs whole methods in forked processes: tests/test_planning_measured.py
(small shapes) and benchmarks/bench_memory.py (GPT-2 small, Qwen2.5-0.5B); here each component is checked
against the size of the tensor it models, on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import FAMILIES, tiny_config, tiny_model

from circuits.graph import layout_for
from circuits.planning import (
    PLAN_METHODS,
    MemoryBudgetError,
    ModelShape,
    choose,
    estimate,
    parse_memory,
    prepared_bytes,
    shape_of,
)
from circuits.planning.memory import MIB_FRACTIONS
from circuits.tasks import Task

GPT2_SMALL = ModelShape("gpt2", n_layers=12, n_heads=12, n_kv_heads=12, d_model=768, head_dim=64, d_ff=3072,
                        vocab=50257, n_params=124_439_808)


def _task(n: int = 6, P: int = 7, vocab: int = 97) -> Task:
    g = torch.Generator().manual_seed(0)
    return Task(name="r", clean=[], corrupted=[], clean_ids=torch.randint(3, vocab, (n, P), generator=g).tolist(),
                corrupted_ids=torch.randint(3, vocab, (n, P), generator=g).tolist(), answers=[[1]] * n,
                wrong=[[2]] * n, metric="logit_diff")


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_matches_the_model_and_its_graph(family):
    model = tiny_model(family)
    shape = shape_of(model.config)
    lay = layout_for(shape.n_layers, shape.n_heads, shape.parallel_attn_mlp)
    assert (shape.n_senders, shape.n_receivers, shape.n_edges) == (lay.n_senders, lay.n_receivers, lay.n_edges)
    assert shape.n_params == sum(p.numel() for p in model.parameters())
    assert shape.with_dtype("bfloat16").bytes == 2


def test_constants_agree_with_the_engine():
    from circuits.cli.parser import PLAN_METHODS as CLI_PLAN_METHODS
    from circuits.evaluation import faithfulness
    from circuits.pipeline import DISCOVERY_METHODS

    assert MIB_FRACTIONS == faithfulness.MIB_FRACTIONS
    assert set(PLAN_METHODS) == set(DISCOVERY_METHODS) | {"curve"}
    assert set(CLI_PLAN_METHODS) == set(PLAN_METHODS)


@pytest.mark.parametrize("text, expected", [
    ("8GB", 8 * 10**9), ("8G", 8 * 2**30), ("8GiB", 8 * 2**30), ("512MB", 512 * 10**6), ("1.5e9", 1_500_000_000),
    ("8 gb", 8 * 10**9), ("100", 100), ("1.5TB", 1.5 * 10**12), ("64KiB", 65536),
])
def test_parse_memory(text, expected):
    assert parse_memory(text) == int(expected)


@pytest.mark.parametrize("text", ["8XB", "", "GB", "-1GB", "0", "nan", "1e400GB", "eight"])
def test_parse_memory_refuses_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="8GB.*8GiB"):
        parse_memory(text)


def test_recorded_and_prepared_runs_are_the_size_the_estimate_says():
    model = tiny_model("gpt2")
    shape = shape_of(model.config)
    task = _task(n=6, P=7)
    from circuits import PatchRunner

    runner = PatchRunner(model, task, batch_size=4, max_rows=512)

    def size(t):
        return t.numel() * t.element_size()

    held = 0
    for p in runner.prepared:  # the sparse base shares the corrupted senders with p.reference
        sb = p.sparse
        held += size(p.reference) + size(p.clean_logits) + size(p.corrupted_logits) + size(sb.delta)
        held += sum(size(r) for r in sb.resid_corr) + sum(size(t) for pair in sb.qkv for run in pair for t in run)
        assert sb.z_corr.data_ptr() == p.reference.data_ptr()
    assert held == prepared_bytes(shape, 7, 6)
    e = dict((c[0], c[1]) for c in estimate(shape, "eap", 7, 4).components)
    run = runner.tm.run(runner.prepared[0].batch.clean, runner.prepared[0].batch.attention_mask, record=True)
    assert e["clean + corrupted senders"] == 2 * run.senders.numel() * 4
    assert e["parameters"] == shape.n_params * 4


def test_delta_buffer_is_the_size_the_estimate_says():
    from circuits.runtime import Patch, state

    model = tiny_model("llama")
    shape = shape_of(model.config)
    from circuits import TracedModel

    tm = TracedModel(model)
    B, P, K = 3, 5, 4
    ids = torch.randint(3, 97, (B, P))
    ref = tm.run(ids, None, record=True).senders
    seen = []
    original = state.RunState._add

    def spy(self, *a, **kw):
        original(self, *a, **kw)
        if self.buffer is not None:
            seen.append(self.buffer.numel() * self.buffer.element_size())

    state.RunState._add = spy
    try:
        with torch.no_grad():
            tm.run(ids, None, patch=Patch(torch.rand(K, tm.layout.n_edges), ref))
    finally:
        state.RunState._add = original
    parts = dict((c[0], c[1]) for c in estimate(shape, "acdc", P, B, B, max_rows=K * B, sparse=False).components)
    assert max(seen) == parts["delta buffer"]


def test_estimates_grow_with_the_work():
    for method in PLAN_METHODS:
        small, big = (estimate(GPT2_SMALL, method, 128, b, 100).peak for b in (1, 32))
        assert 0 < small < big, method
        assert estimate(GPT2_SMALL, method, 256, 8, 100).peak > estimate(GPT2_SMALL, method, 128, 8, 100).peak
    few, many = (estimate(GPT2_SMALL, "curve", 128, 4, 100, max_rows=r).peak for r in (4, 40))
    assert few < many
    assert estimate(GPT2_SMALL.with_dtype("bfloat16"), "eap", 128, 8).peak < estimate(GPT2_SMALL, "eap", 128, 8).peak


def test_choose_fits_the_budget_or_refuses():
    plan = choose(GPT2_SMALL, "exact", 128, 32, parse_memory("24GB"), 100)
    assert plan.estimate.peak <= parse_memory("24GB") and plan.batch == 32
    tight = estimate(GPT2_SMALL, "eap", 128, 8).peak
    lowered = choose(GPT2_SMALL, "eap", 128, 32, tight, 100)
    assert lowered.batch == 8 and lowered.estimate.peak <= tight
    with pytest.raises(MemoryBudgetError, match=r"largest batch that fits is 8 \(--batch-size 8\)"):
        choose(GPT2_SMALL, "eap", 128, 32, tight, 100, batch_fixed=True)
    with pytest.raises(MemoryBudgetError, match="even with one example per batch"):
        choose(GPT2_SMALL, "eap", 128, 32, parse_memory("100MB"), 100)
    rows = choose(GPT2_SMALL, "curve", 128, 8, estimate(GPT2_SMALL, "curve", 128, 8, 100, max_rows=24).peak, 100)
    assert rows.batch == 8 and rows.max_rows == 24  # three masks per forward fit, four do not


def test_curves_count_their_circuits_and_the_sparse_path():
    from circuits.evaluation import MIB_FRACTIONS as FRACTIONS
    from circuits.planning import curve_edges

    assert curve_edges(1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500]  # the full graph needs no forward
    assert len(curve_edges(GPT2_SMALL.n_edges)) == len(FRACTIONS) - 1
    # on the CPU the near-dense circuits take the general forward one at a time, and the sparse forward of the
    # others is the larger part; stacked (other devices), the near-dense circuits' general forward is
    sparse = dict((c[0], c[1]) for c in estimate(GPT2_SMALL, "curve", 32, 8, 8, device="cpu").components)
    stacked = dict((c[0], c[1]) for c in estimate(GPT2_SMALL, "curve", 32, 8, 8).components)
    dense = dict((c[0], c[1]) for c in estimate(GPT2_SMALL, "curve", 32, 8, 8, sparse=False).components)
    assert "changed senders' store" in sparse and "delta buffer" in stacked and "delta buffer" in dense
    assert sum(sparse.values()) < sum(stacked.values())
    assert sparse["changed senders' store"] < 9 * (GPT2_SMALL.n_senders - 1) * 8 * 32 * 768 * 4  # fewer than every node
    assert sparse["prepared runs"] > dense["prepared runs"] == prepared_bytes(GPT2_SMALL, 32, 8, sparse=False)
    # more rows than circuits change nothing: the curve has 9 masks to patch
    assert estimate(GPT2_SMALL, "curve", 32, 8, 8, max_rows=72).peak == estimate(GPT2_SMALL, "curve", 32, 8, 8).peak
    no_sparse = ModelShape(**{**GPT2_SMALL.__dict__, "sparse": False})  # a family without additive_residual
    assert estimate(no_sparse, "curve", 32, 8, 8).peak == estimate(GPT2_SMALL, "curve", 32, 8, 8, sparse=False).peak


def test_choose_falls_back_to_the_dense_path_when_only_it_fits():
    n = 2000  # the sparse path's recordings of 2000 examples outweigh the dense path's per-forward buffers
    dense = estimate(GPT2_SMALL, "curve", 64, 8, n, max_rows=8, sparse=False)
    assert estimate(GPT2_SMALL, "curve", 64, 8, n, max_rows=8).peak > dense.peak
    plan = choose(GPT2_SMALL, "curve", 64, 8, dense.peak, n, batch_fixed=True)
    assert not plan.sparse and plan.batch == 8 and plan.estimate.peak <= dense.peak
    assert "dense masked forward" in plan.summary()
    roomy = choose(GPT2_SMALL, "curve", 64, 8, parse_memory("1TB"), n)
    assert roomy.sparse and "dense" not in roomy.summary()


def test_runner_rows_default_to_what_fits_the_free_memory():
    from circuits import PatchRunner
    from circuits.planning import runner_plan

    model = tiny_model("gpt2")
    task = _task(n=6, P=7)
    runner = PatchRunner(model, task, batch_size=4)
    batches = [p.batch for p in runner.prepared]
    assert runner.max_rows == runner_plan(model, batches, True).max_rows
    assert PatchRunner(model, task, batch_size=4, max_rows=12).max_rows == 12  # an explicit value is kept
    with pytest.raises(ValueError, match="max_rows must be at least 1"):
        PatchRunner(model, task, max_rows=0)
    roomy = runner_plan(model, batches, True, budget=parse_memory("8GB"))
    assert roomy.max_rows == 512 and roomy.sparse
    one = estimate(shape_of(model.config), "acdc", 7, 4, 6, max_rows=4).peak
    tight = runner_plan(model, batches, True, budget=one)
    assert tight.max_rows < 512 and tight.estimate.peak <= one
    assert runner_plan(model, batches, True, budget=1).max_rows == 4  # nothing fits: one mask per forward


def test_bf16_scores_match_float32():
    """bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2 % per operation); through a few layers,
    the products of a forward and a backward and the float32 accumulation the scores should differ by a
    few percent of their scale, and the ranking of the important edges should hardly change."""
    from circuits import attribute

    m32 = tiny_model("llama")
    m16 = tiny_model("llama", dtype=torch.bfloat16)
    task = _task(n=8, P=6)
    for method in ("eap", "eap-ig-inputs"):
        a = attribute(m32, task, method=method, steps=2).scores
        b = attribute(m16, task, method=method, steps=2).scores
        assert b.dtype == torch.float32
        assert float((a - b).abs().max()) <= 5e-2 * float(a.abs().max()), method
        k = 50
        top_a, top_b = (set(s.abs().topk(k).indices.tolist()) for s in (a, b))
        assert len(top_a & top_b) >= 0.8 * k, method


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from circuits import cli

    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_plan_prints_the_table(tmp_path, capsys):
    cfg = tiny_config("qwen2").to_dict()
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    code, out, err = _cli(capsys, "plan", "--model", str(tmp_path / "config.json"), "--method", "curve", "--tokens", "16",
                          "--max-memory", "8GB")
    assert code == 0, err
    assert "prepared runs" in out and "changed senders' store" in out and "fits" in out
    code, out, _ = _cli(capsys, "plan", "--model", "stories260k", "--method", "eap", "--tokens", "32", "--max-memory", "1MB")
    assert code == 1 and "does not fit" in out


@pytest.mark.parametrize("args, message", [
    (["--max-memory", "8XB"], "cannot read the memory size '8XB'"),
    (["--max-memory", "1MB"], "more than the 977 KiB budget even with one example per batch"),
])
def test_discover_refuses_before_loading(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "discover", "--model", "stories260k", "--task", "pronoun", "--method", "eap", "--out",
                        str(out), "--quiet", *args)
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_plan_refuses_an_unknown_model(tmp_path, capsys):
    code, _, err = _cli(capsys, "plan", "--model", str(tmp_path / "nowhere"), "--method", "eap", "--tokens", "8")
    assert code == 2 and "error: --model" in err


def test_planner_models_the_cpu_limit_on_stacked_dense_masks():
    """On the CPU the runner stacks only as many near-dense masks per general forward as CPU_LAYER_BYTES allows."""
    from circuits.planning import cpu_dense_masks

    shape = GPT2_SMALL
    assert cpu_dense_masks(12, 8, 32, 768, 4) == 1 and cpu_dense_masks(4, 2, 8, 64, 4) > 100
    cpu, stacked = (estimate(shape, "curve", 32, 8, 8, 512, sparse=False, device=d).peak for d in ("cpu", None))
    assert cpu < stacked


def test_plans_for_the_cpu_use_its_limit():
    """choose (and the CLI's plans through it) passes the device to estimate: with a budget between the CPU
    estimate and the stacked upper bound, a CPU plan keeps the batch that the device-less plan must lower;
    "cuda:0" plans like the stacked bound, and "cpu:0" like "cpu"."""
    shape = GPT2_SMALL
    cpu, stacked = (estimate(shape, "curve", 32, 8, 8, 512, sparse=False, device=d).peak for d in ("cpu", None))
    budget = (cpu + stacked) // 2
    on_cpu = choose(shape, "curve", 32, 8, budget, 8, sparse=False, device="cpu")
    assert on_cpu.batch == 8 and on_cpu.estimate.peak <= budget
    for device in (None, "cuda:0"):
        anywhere = choose(shape, "curve", 32, 8, budget, 8, sparse=False, device=device)
        assert (anywhere.batch, anywhere.max_rows) < (on_cpu.batch, on_cpu.max_rows)
    assert estimate(shape, "curve", 32, 8, 8, 512, sparse=False, device="cpu:0").peak == cpu
