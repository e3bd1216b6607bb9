"""Masked runs inside ``TracedModel.reusing_buffers`` share one delta buffer and give the same logits; a masked
run that does not record keeps only its newest sender outputs."""

import pytest
import torch
from tiny_models import random_batch, tiny_model

from circuits import Patch, TracedModel
from circuits.runtime import RunState, Workspace


def _patched(tm: TracedModel, seed: int) -> torch.Tensor:
    clean, corr, am = random_batch()
    with torch.no_grad():
        ref = tm.run(corr, am, record=True).senders
        keep = (torch.rand(2, tm.layout.n_edges, generator=torch.Generator().manual_seed(seed)) > 0.5).float()
        return tm.run(clean, am, patch=Patch(keep, ref)).logits


@pytest.fixture
def states(monkeypatch) -> list[RunState]:
    """Every RunState built from here on, in order."""
    built: list[RunState] = []
    init = RunState.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(RunState, "__init__", spy)
    return built


def test_reused_buffer_gives_the_same_logits_and_is_freed_after(states):
    tm = TracedModel(tiny_model("llama"))
    fresh = [_patched(tm, s) for s in (0, 1)]
    first = len(states)
    with tm.reusing_buffers():
        with tm.reusing_buffers():  # nested: the outer block's workspace
            reused = [_patched(tm, s) for s in (0, 1)]
        assert tm.workspace is not None
    assert tm.workspace is None
    for a, b in zip(fresh, reused):
        assert (a - b).abs().max() <= 1e-6
    patched = [s.buffer for s in states[first:] if s.buffer is not None]  # the two masked runs (not the recordings)
    assert len(patched) == 2 and patched[0].data_ptr() == patched[1].data_ptr()


def test_a_held_workspace_keeps_the_buffer_across_blocks(states):
    tm = TracedModel(tiny_model("llama"))
    ws = Workspace()
    first = len(states)
    for seed in (0, 1):
        with tm.reusing_buffers(ws):
            _patched(tm, seed)
        assert tm.workspace is None
    patched = [s.buffer for s in states[first:] if s.buffer is not None]
    assert len(patched) == 2 and patched[0].data_ptr() == patched[1].data_ptr()


def test_workspace_hands_out_its_block_while_it_has_room():
    ws, cpu = Workspace(), torch.device("cpu")
    a = ws.empty("x", (2, 3), torch.float32, cpu)
    assert a.shape == (2, 3) and a.is_contiguous()
    assert ws.empty("x", (3, 2), torch.float32, cpu).data_ptr() == a.data_ptr()  # same block, another shape
    b = ws.empty("x", (3, 3), torch.float32, cpu)  # more than it holds: a new block
    assert b.shape == (3, 3) and ws.empty("x", (2, 2), torch.float32, cpu).data_ptr() == b.data_ptr()
    assert ws.empty("x", (2, 2), torch.float64, cpu).dtype == torch.float64
    assert ws.empty("y", (2, 2), torch.float32, cpu).data_ptr() != b.data_ptr()  # names do not share


def _masked(family: str) -> tuple[TracedModel, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A traced tiny model, a clean and a corrupted batch, their mask, a random half-kept edge mask and the
    corrupted run's senders (recorded, which is the first run)."""
    tm = TracedModel(tiny_model(family))
    clean, corr, am = random_batch()
    keep = (torch.rand(tm.layout.n_edges, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    with torch.no_grad():
        ref = tm.run(corr, am, record=True).senders
    return tm, clean, corr, am, keep, ref


def test_a_masked_run_that_does_not_record_lets_older_outputs_go(states):
    tm, clean, _, am, keep, ref = _masked("gpt2")
    with torch.no_grad():
        plain = tm.run(clean, am, patch=Patch(keep, ref)).logits
        rec = tm.run(clean, am, patch=Patch(keep, ref), record=True)
    held = [[z is not None for _, _, z, _ in s.groups] for s in states[1:]]
    assert held[0] == [False] * (len(held[0]) - 1) + [True]  # the last MLP's output only
    assert all(held[1]) and rec.senders.shape[0] == tm.layout.n_senders
    assert (plain - rec.logits).abs().max() <= 1e-6


def test_the_last_loops_scratch_is_kept_for_the_next_until_another_run(states):
    tm, clean, corr, am, keep, ref = _masked("llama")
    first = len(states)
    with torch.no_grad():
        for _ in range(2):
            with tm.reusing_buffers():
                tm.run(clean, am, patch=Patch(keep, ref))
            assert tm.held_bytes >= states[-1].buffer.numel() * 4  # kept after the block
        patched = [s.buffer for s in states[first:] if s.buffer is not None]
        assert len(patched) == 2 and patched[0].data_ptr() == patched[1].data_ptr()  # the second block reused it
        tm.run(clean, am)  # a plain forward leaves it
        assert tm.held_bytes > 0
        tm.run(corr, am, record=True)  # a recording outside any loop lets it go first
        assert tm.held_bytes == 0
        with tm.reusing_buffers():
            tm.run(clean, am, patch=Patch(keep, ref))
        tm.release_buffers()
        assert tm.held_bytes == 0
        with tm.reusing_buffers(Workspace()):  # a caller's workspace stays the caller's
            tm.run(clean, am, patch=Patch(keep, ref))
        assert tm.held_bytes == 0


def test_a_plain_masked_run_keeps_its_scratch_and_other_runs_let_it_go(states):
    tm, clean, _, am, keep, ref = _masked("gpt2")
    first = len(states)
    with torch.no_grad():
        a = tm.run(clean, am, patch=Patch(keep, ref)).logits
        assert tm.held_bytes > 0
        b = tm.run(clean, am, patch=Patch(keep, ref)).logits  # a second call takes the first one's buffer
    patched = [s.buffer for s in states[first:]]
    assert len(patched) == 2 and patched[0].data_ptr() == patched[1].data_ptr()
    assert torch.equal(a, b)  # the logits are not views of the scratch the second run overwrote
    with torch.no_grad():
        rec = tm.run(clean, am, patch=Patch(keep, ref), record=True)  # recorded outputs may live in the scratch
    assert tm.held_bytes == 0 and (rec.logits - a).abs().max() <= 1e-6
    with torch.no_grad():
        tm.run(clean, am, patch=Patch(keep, ref))
    tm.run(clean, am, patch=Patch(keep, ref))  # with gradients: a training step's peak must not include it
    assert tm.held_bytes == 0


def test_a_block_made_under_inference_mode_is_not_handed_out_outside_it():
    tm, clean, _, am, keep, ref = _masked("gpt2")
    with torch.no_grad():
        want = tm.run(clean, am, patch=Patch(keep, ref)).logits
    tm.release_buffers()
    with torch.inference_mode():
        a = tm.run(clean, am, patch=Patch(keep, ref)).logits
    with torch.no_grad():  # would raise writing into the inference-mode block
        b = tm.run(clean, am, patch=Patch(keep, ref)).logits
    with torch.inference_mode():
        c = tm.run(clean, am, patch=Patch(keep, ref)).logits
    for x in (a, b, c):
        assert (x - want).abs().max() <= 1e-6


def test_a_loop_keeps_only_the_blocks_it_asked_for():
    ws, cpu, f = Workspace(), torch.device("cpu"), torch.float32
    a = ws.empty("a", (4,), f, cpu)  # an earlier loop's blocks
    ws.empty("b", (4,), f, cpu)
    ws.begin()
    assert ws.empty("a", (2,), f, cpu).data_ptr() == a.data_ptr()  # reused: nothing allocated, nothing let go
    assert ws.nbytes() == 32
    ws.empty("c", (4,), f, cpu)  # a new block: "b", which this loop has not asked for, goes first
    assert ws.nbytes() == 32
    ws.empty("b", (4,), f, cpu)  # asked for again: a new block
    ws.end()
    assert ws.nbytes() == 48  # a, c, b: all asked for in this loop
    ws.begin()
    ws.empty("a", (4,), f, cpu)
    ws.end()
    assert ws.nbytes() == 16  # only "a" kept


def test_the_next_loop_lets_go_of_what_it_does_not_use():
    tm, clean, _, am, keep, ref = _masked("gpt2")
    with torch.no_grad():
        with tm.reusing_buffers():
            tm.run(clean, am, patch=Patch(keep, ref))
            tm.workspace.empty("another loop's block", (1000,), torch.float32, torch.device("cpu"))
        with_other = tm.held_bytes
        with tm.reusing_buffers():
            tm.run(clean, am, patch=Patch(keep, ref))
    assert tm.held_bytes == with_other - 4000
