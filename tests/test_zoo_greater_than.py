"""Tests for the zoo model greater-than-2l and its training script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from circuits import zoo
from circuits.tasks import greater_than as gt
from circuits.tasks import load_task
from circuits.zoo.train import greater_than as train_gt

NAME = "greater-than-2l"


@pytest.fixture(scope="module")
def loaded():
    return zoo.load(NAME)


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((zoo.MODELS[NAME].path / "training.json").read_text(encoding="utf-8"))


def test_registry_entry(loaded) -> None:
    entry = zoo.MODELS[NAME]
    assert entry.task == "greater-than" and entry.card == f"docs/zoo.md#{NAME}"
    assert zoo.task_options(NAME) == {"prepend_bos": True}
    model, tokenizer = loaded
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert model.config.n_layer == 2 and model.config.n_head == 4
    assert len(tokenizer) == model.config.vocab_size
    assert tokenizer.bos_token_id == train_gt.BOS_ID == model.config.bos_token_id
    for block in model.transformer.h:  # real MLPs, not zeroed
        assert torch.count_nonzero(block.mlp.c_fc.weight) > 0


def test_tokenizer_covers_task(loaded) -> None:
    _, tokenizer = loaded
    assert tokenizer.tokenize("The war lasted from the year 1732 to the year 17") == [
        "The", "war", "lasted", "from", "the", "year", "17", "32", "to", "the", "year", "17"
    ]
    for word in gt.words():
        ids = tokenizer(word, add_special_tokens=False).input_ids
        expected = 2 if len(word) == 4 and word.isdigit() else 1
        assert len(ids) == expected and tokenizer.unk_token_id not in ids, word
    task = load_task("greater-than", tokenizer, n=200, seed=11, **zoo.task_options(NAME))
    assert task.meta["years_excluded"] == 0
    for ids in task.clean_ids + task.corrupted_ids:
        assert tokenizer.unk_token_id not in ids and ids[0] == tokenizer.bos_token_id


def test_model_solves_task_fresh_seed(loaded, record) -> None:
    """prob_diff on a fresh task sample is at least what training.json (and the card) report."""
    model, tokenizer = loaded
    task = load_task("greater-than", tokenizer, n=300, seed=2024, **zoo.task_options(NAME))
    diffs = {}
    with torch.no_grad():
        for label, ids in (("clean", task.clean_ids), ("corrupted", task.corrupted_ids)):
            probs = model(input_ids=torch.tensor(ids)).logits[:, -1].softmax(-1)
            diffs[label] = torch.stack(
                [probs[i, a].sum() - probs[i, w].sum() for i, (a, w) in enumerate(zip(task.answers, task.wrong))]
            ).mean().item()
    assert diffs["clean"] >= 0.99
    assert diffs["clean"] >= record["task"]["prob_diff_clean"] - 0.01
    assert diffs["corrupted"] < 0.2


def test_heldout_matches_record(loaded, record) -> None:
    model, _ = loaded
    split = train_gt.split_combos(train_gt.DataSpec(**record["data"]), record["seed"])
    rows = split.heldout_combos[split.heldout_combos[:, 2] >= 2][:1000]
    metrics = train_gt.evaluate(model, rows)
    assert metrics["accuracy"] >= record["heldout_combos"]["accuracy"] - 0.01
    assert metrics["prob_diff"] >= record["heldout_combos"]["prob_diff"] - 0.01
    assert metrics["loss"] <= metrics["optimal_loss"] + 0.05
    # held-out rows were never trained on
    train_set = {tuple(r) for r in split.train.tolist()}
    assert not any(tuple(r) in train_set for r in split.heldout_combos.tolist() + split.heldout_years.tolist())


def test_training_script_smoke(tmp_path: Path) -> None:
    args = ["--seed", "1", "--steps", "3", "--eval-size", "16"]
    summary = train_gt.main(["--out", str(tmp_path / "a")] + args)
    assert summary["steps"] == 3 and summary["seed"] == 1
    assert (tmp_path / "a" / "training.json").is_file()
    model, tokenizer = zoo.load(tmp_path / "a")
    assert model.config.n_layer == 2
    assert tokenizer.bos_token_id == train_gt.BOS_ID
    train_gt.main(["--out", str(tmp_path / "b")] + args)  # same seed: the same weights, bit for bit
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
