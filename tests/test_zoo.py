"""Tests for circuits.zoo: registry, loading, shipped models' behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from circuits import zoo
from circuits.zoo.train import induction

ZOO_DIR = Path(zoo.__file__).resolve().parent
MAX_MODEL_BYTES = 2 * 1024 * 1024
MAX_ZOO_BYTES = 20 * 1024 * 1024


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def stories():
    return zoo.load("stories260k")


def test_registry() -> None:
    assert zoo.list_models() == sorted(zoo.MODELS)
    assert {"stories260k", "marker_copy", "rope_induction"} <= set(zoo.list_models())
    for name, entry in zoo.MODELS.items():
        assert entry.name == name
        assert entry.path.is_dir(), entry.path
        assert entry.card.startswith(("docs/zoo.md#", "docs/planted.md#"))
        for file in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (entry.path / file).is_file(), (name, file)
        gt = zoo.ground_truth_path(name)
        assert (gt is not None) == entry.has_ground_truth
        if gt is not None:
            assert gt.is_file()


def test_sizes() -> None:
    for entry in zoo.MODELS.values():
        assert _folder_bytes(entry.path) < MAX_MODEL_BYTES, entry.name
    assert _folder_bytes(ZOO_DIR / "models") <= MAX_ZOO_BYTES


def test_model_cards_exist() -> None:
    docs = ZOO_DIR.parents[1] / "docs"
    for entry in zoo.MODELS.values():
        doc = (docs / entry.card.split("#")[0].split("/")[-1]).read_text(encoding="utf-8")
        assert f"## {entry.name}" in doc or f"## `{entry.name}`" in doc, entry.name


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_every_model_loads(name: str) -> None:
    model, tokenizer = zoo.load(name)
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert len(tokenizer) == model.config.vocab_size
    ids = tokenizer("Once upon a time" if name == "stories260k" else "t1 t2 t3", return_tensors="pt").input_ids
    if name == "stories260k":  # its tokenizer prepends BOS, as llama2.c does
        assert ids[0, 0].item() == tokenizer.bos_token_id == model.config.bos_token_id
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_load_local_folder_and_dtype() -> None:
    model, tokenizer = zoo.load(zoo.MODELS["stories260k"].path, dtype=torch.float64)
    assert next(model.parameters()).dtype == torch.float64
    assert tokenizer.pad_token_id == 0


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        zoo.load("no-such-model")
    for name in zoo.list_models():
        assert name in str(err.value)
    with pytest.raises(ValueError):
        zoo.ground_truth_path("no-such-model")


def test_missing_path_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="does not exist"):
        zoo.load(missing)
    with pytest.raises(ValueError, match="does not exist"):
        zoo.load(str(missing))


def test_stories260k_generates_documented_story(stories) -> None:
    model, tokenizer = stories
    ids = torch.tensor([[tokenizer.bos_token_id]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=30, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    assert text.startswith("Once upon a time, there was a little girl named Lily"), text


def test_stories260k_tokenizer_matches_asset_conversion(stories) -> None:
    """The shipped tokenizer.json is what the converter produces from the shipped tok512.bin."""
    from circuits.tokenization import load_llama2c_tokenizer

    _, tokenizer = stories
    fresh = load_llama2c_tokenizer(zoo.MODELS["stories260k"].path / "tok512.bin", vocab_size=512)
    assert json.loads(fresh.backend_tokenizer.to_str()) == json.loads(tokenizer.backend_tokenizer.to_str())



def test_training_script_smoke(tmp_path: Path) -> None:
    summary = induction.main(["--out", str(tmp_path), "--seed", "1", "--steps", "3", "--eval-size", "16"])
    assert summary["steps"] == 3 and summary["seed"] == 1
    assert (tmp_path / "training.json").is_file()
    model, tokenizer = zoo.load(tmp_path)
    assert model.config.n_layer == 2
    assert tokenizer.bos_token_id == induction.BOS_ID
