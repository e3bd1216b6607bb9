"""Tests for the zoo's IOI model (ioi-3l) and its training script circuits/zoo/train/ioi.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from circuits import zoo
from circuits.tasks import ioi as ioi_task
from circuits.tasks import load_task
from circuits.zoo.train import ioi as ioi_train

NAME = "ioi-3l"


@pytest.fixture(scope="module")
def ioi_model():
    return zoo.load(NAME)


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((zoo.MODELS[NAME].path / "training.json").read_text(encoding="utf-8"))


def _end_logits(model, task) -> torch.Tensor:
    """Last-position logits of the clean prompts (left-padded batch, positions from the first real token)."""
    batch = task.batch()
    with torch.no_grad():
        logits = model(
            input_ids=batch.clean, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits
    return logits[:, -1]


def test_registry_entry_and_loading(ioi_model) -> None:
    entry = zoo.MODELS[NAME]
    assert entry.task == "ioi" and entry.card == f"docs/zoo.md#{NAME}"
    model, tokenizer = ioi_model
    assert model.config.n_layer == int(NAME.split("-")[1].rstrip("l"))
    assert len(tokenizer) == model.config.vocab_size
    assert tokenizer.convert_tokens_to_ids(list(ioi_train.SPECIAL_TOKENS)) == list(range(4))
    assert zoo.task_options(NAME) == {"prepend_bos": True}


def test_tokenizer_covers_every_task_word(ioi_model) -> None:
    _, tokenizer = ioi_model
    text = " ".join(sorted(ioi_task.words()))
    assert tokenizer.unk_token_id not in tokenizer(text).input_ids
    assert tokenizer("When Mary and John went to the store, John gave a drink to").input_ids[-6:] == (
        tokenizer.convert_tokens_to_ids([",", "John", "gave", "a", "drink", "to"])
    )
    for name in ioi_task.names():  # every name is a single token
        assert tokenizer.convert_tokens_to_ids(name) != tokenizer.unk_token_id


def test_task_prompts_have_no_unk_and_aligned_corruption(ioi_model) -> None:
    _, tokenizer = ioi_model
    task = load_task("ioi", tokenizer, n=200, seed=11, **zoo.task_options(NAME))
    assert len(task) == 200 and not task.meta["names_excluded"] and not task.meta["dropped"]
    for clean, corrupted in zip(task.clean_ids, task.corrupted_ids):
        assert tokenizer.unk_token_id not in clean and tokenizer.unk_token_id not in corrupted
        assert len(clean) == len(corrupted) and clean[0] == tokenizer.bos_token_id


def test_solves_the_ioi_task(ioi_model, record) -> None:
    """On a fresh task sample: the IO name is usually the top prediction and beats S by a clear margin."""
    model, tokenizer = ioi_model
    task = load_task("ioi", tokenizer, n=256, seed=12345, **zoo.task_options(NAME))
    end = _end_logits(model, task)
    io = torch.tensor([a[0] for a in task.answers])
    s = torch.tensor([w[0] for w in task.wrong])
    arange = torch.arange(len(io))
    diff = end[arange, io] - end[arange, s]
    accuracy = (end.argmax(-1) == io).float().mean().item()
    held = record["heldout"]
    assert accuracy >= held["accuracy"] - 0.02, accuracy
    assert diff.mean().item() >= held["logit_diff"] - 1.0, diff.mean().item()
    assert (diff > 0).float().mean().item() >= held["io_over_s"] - 0.02
    # docs/zoo.md: held-out accuracy 1.0, logit diff 13.95; the tests require >= 0.98 and >= 12.9 on fresh data
    assert held["accuracy"] >= 0.99 and held["logit_diff"] >= 13.9


def test_layer2_heads_suppress_the_repeated_subject(ioi_model) -> None:
    """The card's reading: every layer-2 head attends from the end to S2; zeroing them all removes IO > S."""
    model, _ = ioi_model
    batch = ioi_train.make_batch(256, torch.Generator().manual_seed(99))
    patterns = ioi_train.head_pattern_scores(model, batch)
    assert all(patterns[f"a2.h{h}"]["end_to_s2"] > 0.8 for h in range(4))

    def zero_all(module: torch.nn.Module, args: tuple) -> tuple:
        return (torch.zeros_like(args[0]),) + tuple(args[1:])

    handle = model.transformer.h[2].attn.c_proj.register_forward_pre_hook(zero_all)
    try:
        ablated = ioi_train.evaluate(model, batch)
    finally:
        handle.remove()
    assert abs(ablated["logit_diff"]) < 1.0 and ablated["io_over_s"] < 0.65
    assert ioi_train.evaluate(model, batch)["logit_diff"] > 12.0


def test_training_batch_matches_tokenizer() -> None:
    """make_batch builds exactly the ids the tokenizer gives for the same sentence."""
    tokenizer = ioi_train.build_tokenizer(ioi_train.DataSpec.seq_len)
    batch = ioi_train.make_batch(32, torch.Generator().manual_seed(3))
    inverse = {i: t for t, i in tokenizer.get_vocab().items()}
    for i in range(32):
        ids = batch.ids[i, : batch.length[i]].tolist()
        text = " ".join(inverse[t] for t in ids[1:]).replace(" ,", ",").replace(" .", ".")
        assert tokenizer(text).input_ids == ids
        assert ids[batch.io_pos[i]] == batch.io[i] and ids[batch.s1_pos[i]] == ids[batch.s2_pos[i]] == batch.s[i]
        assert batch.io[i] != batch.s[i]


def test_training_script_smoke(tmp_path: Path) -> None:
    summary = ioi_train.main(["--out", str(tmp_path), "--seed", "1", "--steps", "3", "--eval-size", "16"])
    assert summary["steps"] == 3 and summary["seed"] == 1
    assert (tmp_path / "training.json").is_file()
    model, tokenizer = zoo.load(tmp_path)
    assert model.config.n_layer == ioi_train.TrainSpec.n_layer
    assert tokenizer.bos_token_id == ioi_train.BOS_ID
