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


@pytest.fixture(scope="module")
def induction_model():
    return zoo.load("induction-2l")


@pytest.fixture(scope="module")
def induction_record() -> dict:
    return json.loads((zoo.MODELS["induction-2l"].path / "training.json").read_text(encoding="utf-8"))


def test_registry() -> None:
    assert zoo.list_models() == sorted(zoo.MODELS)
    assert {"stories260k", "induction-2l", "marker_copy", "rope_induction"} <= set(zoo.list_models())
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
    assert _folder_bytes(ZOO_DIR) <= MAX_ZOO_BYTES


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
    if name in ("stories260k", "induction-2l"):  # their tokenizers prepend BOS
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


def test_stories260k_solves_pronoun_as_its_card_says(stories) -> None:
    """docs/zoo.md: on 200 pronoun examples (seed 0) the answer is top-1 65% of the time, logit
    difference +2.89 clean vs -2.91 corrupted."""
    from circuits import load_task
    from circuits.metrics import answer_position_logits, logit_diff

    model, tokenizer = stories
    task = load_task("pronoun", tokenizer, n=200, seed=0, **zoo.task_options("stories260k"))
    ld = {"clean": [], "corrupted": []}
    top1 = []
    with torch.no_grad():
        for b in task.batches(50):
            for kind in ld:
                logits = model(getattr(b, kind), attention_mask=b.attention_mask).logits
                ld[kind].append(logit_diff(logits, b))
                if kind == "clean":
                    top1.append(answer_position_logits(logits, b).argmax(-1) == b.answers[:, 0])
    clean, corrupted = torch.cat(ld["clean"]).mean().item(), torch.cat(ld["corrupted"]).mean().item()
    assert clean >= 2.89 - 0.01 and corrupted <= -2.91 + 0.01, (clean, corrupted)
    assert torch.cat(top1).float().mean().item() >= 0.65 - 0.005


def test_stories260k_tokenizer_matches_asset_conversion(stories) -> None:
    """The shipped tokenizer.json is what the converter produces from the shipped tok512.bin."""
    from circuits.zoo.llama2c_tokenizer import load_llama2c_tokenizer

    _, tokenizer = stories
    fresh = load_llama2c_tokenizer(zoo.MODELS["stories260k"].path / "tok512.bin", vocab_size=512)
    assert json.loads(fresh.backend_tokenizer.to_str()) == json.loads(tokenizer.backend_tokenizer.to_str())


def test_induction_tokenizer_layout(induction_model) -> None:
    _, tokenizer = induction_model
    n_special = len(induction.SPECIAL_TOKENS)
    assert tokenizer.convert_tokens_to_ids(list(induction.SPECIAL_TOKENS)) == list(range(n_special))
    assert tokenizer("t0 t5 t17").input_ids == [induction.BOS_ID, n_special, n_special + 5, n_special + 17]
    assert tokenizer.decode([n_special + 3, n_special + 4]) == "t3 t4"
    assert tokenizer.pad_token_id == induction.PAD_ID


def test_induction_accuracy_on_fresh_data(induction_model, induction_record) -> None:
    """Accuracy on freshly sampled data matches what training.json reports."""
    model, _ = induction_model
    data = induction.DataSpec(**induction_record["data"])
    ids, _, mask = induction.make_batch(512, data, torch.Generator().manual_seed(12345))
    metrics = induction.evaluate(model, ids, mask)
    assert metrics["accuracy_repeat"] >= induction_record["heldout"]["accuracy_repeat"] - 0.03
    assert metrics["loss_repeat"] <= induction_record["heldout"]["loss_repeat"] + 0.15
    assert induction_record["heldout"]["accuracy_repeat"] > 0.8  # it did learn induction


def test_induction_model_on_induction_task(induction_model) -> None:
    """The task generator (circuits.tasks) with the zoo's options: the model copies the repeat."""
    from circuits.tasks import load_task

    model, tokenizer = induction_model
    task = load_task("induction", tokenizer, n=64, seed=3, **zoo.task_options("induction-2l"))
    clean = torch.tensor(task.clean_ids)
    corrupted = torch.tensor(task.corrupted_ids)
    answers = torch.tensor([a[0] for a in task.answers])
    with torch.no_grad():
        clean_lp = model(input_ids=clean).logits[:, -1].log_softmax(-1)
        corrupted_lp = model(input_ids=corrupted).logits[:, -1].log_softmax(-1)
    assert (clean_lp.argmax(-1) == answers).float().mean() >= 0.95
    arange = torch.arange(len(answers))
    assert clean_lp[arange, answers].mean() > corrupted_lp[arange, answers].mean() + 3.0


def test_induction_mlps_are_zero(induction_model) -> None:
    """The MLPs are frozen at zero: every m{l} outputs exactly 0 (attention-only in function)."""
    model, _ = induction_model
    for block in model.transformer.h:
        for param in list(block.mlp.parameters()) + list(block.ln_2.parameters()):
            assert torch.count_nonzero(param) == 0


def test_task_options() -> None:
    options = zoo.task_options("induction-2l")
    assert options["prepend_bos"] is True
    assert len(options["vocab_ids"]) == 60 and min(options["vocab_ids"]) == len(induction.SPECIAL_TOKENS)
    assert zoo.task_options("stories260k") == {"prepend_bos": True}  # its task is pronoun
    assert len(zoo.task_options("stories260k", task="induction")["vocab_ids"]) >= 19
    with pytest.raises(ValueError):
        zoo.task_options("no-such-model")


def test_training_script_smoke(tmp_path: Path) -> None:
    summary = induction.main(["--out", str(tmp_path), "--seed", "1", "--steps", "3", "--eval-size", "16"])
    assert summary["steps"] == 3 and summary["seed"] == 1
    assert (tmp_path / "training.json").is_file()
    model, tokenizer = zoo.load(tmp_path)
    assert model.config.n_layer == 2
    assert tokenizer.bos_token_id == induction.BOS_ID


def _fake_hub_cache(root: Path, repo_id: str, files: list[Path]) -> None:
    """The Hugging Face cache layout for one model: ``models--owner--name/refs/main`` naming a commit and
    ``snapshots/<commit>/`` holding the files (real files here; the hub client writes symlinks to blobs)."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in files:
        (snap / f.name).write_bytes(f.read_bytes())


def test_hub_name_loads_from_local_cache(tmp_path: Path, monkeypatch) -> None:
    """`owner/name` resolves to its snapshot in the HF cache, offline, and loads like the folder it holds;
    a partly cached or uncached name under HF_HUB_OFFLINE fails with the one-line how-to-get-it message."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = zoo.MODELS["stories260k"].path
    _fake_hub_cache(tmp_path, "someone/stories-cached", [p for p in src.iterdir() if p.is_file()])
    model, tokenizer = zoo.load("someone/stories-cached")
    ref, _ = zoo.load("stories260k")
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    assert zoo.check_folder("someone/stories-cached").model_type == "llama"
    _fake_hub_cache(tmp_path, "someone/config-only", [src / "config.json"])
    with pytest.raises(ValueError, match="only part of it is cached"):
        zoo.load("someone/config-only")
    with pytest.raises(ValueError, match="not in the local cache") as err:
        zoo.load("someone/never-downloaded")
    assert "huggingface-cli download someone/never-downloaded" in str(err.value) and "\n" not in str(err.value)
