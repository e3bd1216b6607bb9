"""The model zoo: small models shipped inside the package, loadable offline.

Each model is a ``transformers`` folder under ``circuits/zoo/models/<name>/`` holding
``config.json``, ``model.safetensors``, ``tokenizer.json`` and ``tokenizer_config.json``
(plus provenance: ``SOURCE.txt`` or ``training.json``). Model cards are in ``docs/zoo.md``.

>>> from circuits import zoo
>>> zoo.list_models()
['greater-than-2l', 'induction-2l', 'ioi-3l', 'marker_copy', 'rope_induction', 'stories260k']
>>> model, tokenizer = zoo.load("stories260k")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .hub import hub_snapshot, looks_like_hub_id

if TYPE_CHECKING:  # torch and transformers load only when a model does (listing the zoo stays cheap)
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "MODELS",
    "MODELS_DIR",
    "TOKENIZER_FILES",
    "WEIGHT_FILES",
    "ZooEntry",
    "check_folder",
    "ground_truth_path",
    "list_models",
    "load",
    "load_model",
    "load_tokenizer",
    "model_path",
    "task_options",
]

MODELS_DIR = Path(__file__).resolve().parent / "models"
"""Folder holding one sub-folder per shipped model."""

GROUND_TRUTH_FILE = "ground_truth.json"
"""Name of a model's ground-truth circuit file, inside its folder."""


@dataclass(frozen=True)
class ZooEntry:
    """One shipped model.

    Attributes:
        name: registry key, e.g. ``"stories260k"``.
        description: one line for listings.
        folder: folder relative to ``circuits/zoo/`` (e.g. ``"models/stories260k"``).
        task: name of the task (``circuits.tasks``) the model is meant for.
        has_ground_truth: whether the folder ships ``ground_truth.json`` (a circuit
            known independently of any discovery method).
        card: anchor of the model card in ``docs/zoo.md``.
        task_tokens: regular expression (full match) selecting the vocabulary entries
            that form the token pool of token-level tasks such as ``induction`` (see
            :func:`task_options`); ``None`` if the model has no meaningful pool.
    """

    name: str
    description: str
    folder: str
    task: str
    has_ground_truth: bool
    card: str
    task_tokens: str | None = None

    @property
    def path(self) -> Path:
        """Absolute path of the model folder."""
        return Path(__file__).resolve().parent / self.folder


MODELS: Mapping[str, ZooEntry] = MappingProxyType(
    {
        entry.name: entry
        for entry in (
            ZooEntry(
                name="stories260k",
                description="Karpathy's TinyStories stories260K: pretrained Llama-2 (GQA), 5 layers, 8 heads, vocab 512",
                folder="models/stories260k",
                task="pronoun",
                has_ground_truth=False,
                card="docs/zoo.md#stories260k",
                task_tokens="\u2581[a-z]{2,}",  # word-initial lowercase pieces: "▁the", "▁named", ...
            ),
            ZooEntry(
                name="induction-2l",
                description="GPT-2, 2 layers x 4 heads, MLPs zeroed (attention-only), trained on repeated random tokens",
                folder="models/induction-2l",
                task="induction",
                has_ground_truth=False,
                card="docs/zoo.md#induction-2l",
                task_tokens="t[0-9]+",  # every content token t0 .. t59
            ),
            ZooEntry(
                name="ioi-3l",
                description="GPT-2, 3 layers x 4 heads, d = 64, with MLPs, trained on IOI sentences (indirect object)",
                folder="models/ioi-3l",
                task="ioi",
                has_ground_truth=False,
                card="docs/zoo.md#ioi-3l",
            ),
            ZooEntry(
                name="greater-than-2l",
                description="GPT-2, 2 layers x 4 heads with MLPs, trained on greater-than prompts (years split XX|YY)",
                folder="models/greater-than-2l",
                task="greater-than",
                has_ground_truth=False,
                card="docs/zoo.md#greater-than-2l",
            ),
            ZooEntry(
                name="marker_copy",
                description="hand-compiled GPT-2: copy the token after a marker; known circuit, distractor heads",
                folder="planted/marker_copy",
                task="planted",
                has_ground_truth=True,
                card="docs/planted.md#marker_copy",
                task_tokens="t[0-9]+",
            ),
            ZooEntry(
                name="rope_induction",
                description="hand-compiled Llama (RoPE, RMSNorm, SwiGLU): induction; known circuit, distractors",
                folder="planted/rope_induction",
                task="planted",
                has_ground_truth=True,
                card="docs/planted.md#rope_induction",
                task_tokens="t[0-9]+",
            ),
        )
    }
)
"""The registry, read-only: name -> :class:`ZooEntry`."""


def list_models() -> list[str]:
    """Names of the shipped models, sorted."""
    return sorted(MODELS)


def model_path(name_or_path: str | Path) -> Path:
    """Resolve a zoo name, a local folder or a Hugging Face hub id (``owner/name``, from the local
    cache, downloaded first when the hub is reachable and ``HF_HUB_OFFLINE`` is not set; see
    :mod:`circuits.zoo.hub`) to the folder to load.

    Raises:
        ValueError: ``name_or_path`` is neither a zoo name nor an existing path; the
            message lists the valid names, and says so when it looks like a missing path. For a
            hub id: not in the local cache while offline or unreachable, or not on the hub.
    """
    if isinstance(name_or_path, str) and name_or_path.lower() in MODELS:
        return MODELS[name_or_path.lower()].path
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if not path.exists() and looks_like_hub_id(name_or_path):  # "Qwen/Qwen2.5-0.5B": the local HF cache
        return hub_snapshot(str(name_or_path))
    valid = ", ".join(list_models())
    if path.exists():
        raise ValueError(f"{str(name_or_path)!r} is a file, not a model folder; zoo models: {valid}")
    looks_like_path = isinstance(name_or_path, Path) or any(sep in str(name_or_path) for sep in ("/", "\\", "."))
    if looks_like_path:
        raise ValueError(f"path {str(name_or_path)!r} does not exist (and is not a zoo model; zoo models: {valid})")
    raise ValueError(f"unknown model {str(name_or_path)!r}: not a zoo model ({valid}) and no such folder")


WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                 "pytorch_model.bin.index.json")
"""Weight files :func:`load` can read (one of them must be in the folder)."""

TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
"""Files that hold a tokenizer's vocabulary (``tokenizer_config.json`` alone is not enough)."""


@dataclass(frozen=True)
class FolderCheck:
    """What :func:`check_folder` read: the folder, its raw ``config.json`` and whether it has a tokenizer."""

    path: Path
    config: dict
    has_tokenizer: bool

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type"))


def check_folder(name_or_path: str | Path, *, require_tokenizer: bool = True) -> FolderCheck:
    """Check a zoo name or model folder without loading anything heavy (``config.json`` is only read).

    Checks, in order: the folder exists, it holds a readable ``config.json`` whose ``model_type`` is a
    supported family, weights (:data:`WEIGHT_FILES`) and, with ``require_tokenizer``, tokenizer files
    (:data:`TOKENIZER_FILES`).

    Raises:
        ValueError: one line naming the folder, what is missing or unsupported, and what to do.
    """
    from ..models import SUPPORTED_MODEL_TYPES

    folder = model_path(name_or_path)
    shown = str(name_or_path)
    files = {p.name for p in folder.iterdir()}
    if not files:
        raise ValueError(f"model folder {shown} is empty; it needs config.json, the weights (model.safetensors) "
                         "and the tokenizer files (tokenizer.json) of a transformers model")
    if "config.json" not in files:
        raise ValueError(f"model folder {shown} has no config.json, so it is not a transformers model folder "
                         "(save one with model.save_pretrained(folder))")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{folder / 'config.json'} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{folder / 'config.json'} is not a transformers config (a JSON object)")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        what = f"model_type {model_type!r}" if model_type else "no model_type"
        raise ValueError(f"model folder {shown}: config.json has {what}, which circuits does not support; "
                         f"supported decoder-only families: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if not files & set(WEIGHT_FILES):
        other = sorted(f for f in files if f.endswith((".h5", ".msgpack", ".ckpt", ".pt", ".pth", ".gguf")))
        found = f" (found only {', '.join(other)}; convert them with transformers)" if other else ""
        raise ValueError(f"model folder {shown} has config.json but no weights: expected model.safetensors or "
                         f"pytorch_model.bin{found}; save the model with model.save_pretrained(folder)")
    has_tokenizer = bool(files & set(TOKENIZER_FILES))
    if require_tokenizer and not has_tokenizer:
        raise ValueError(f"model folder {shown} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save it with "
                         "tokenizer.save_pretrained(folder), or build the task from token ids in Python "
                         "(circuits.tasks.task_from_ids)")
    return FolderCheck(folder, config, has_tokenizer)


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        return value
    return dtype


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | str | None = None) -> PreTrainedModel:
    """Load the model of a zoo name or local folder, offline, on ``device`` in ``dtype`` (default float32), in eval mode."""
    import transformers
    from packaging.version import Version
    from transformers import AutoModelForCausalLM

    folder = model_path(name_or_path)
    dtype = _torch_dtype(dtype)
    # transformers renamed `torch_dtype` to `dtype` in 4.56; the package supports both sides
    dtype_key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, **{dtype_key: dtype})
    model = model.to(device=device, dtype=dtype)
    model.eval()
    return model


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a zoo name or local folder, offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path(name_or_path)), local_files_only=True)


def load(
    name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a zoo model (by name), a local ``transformers`` folder or a Hugging Face hub id (``owner/name``,
    from the local cache; downloaded first only when the hub is reachable and ``HF_HUB_OFFLINE`` is not set).

    Returns ``(model, tokenizer)``; the model is on ``device``, in ``dtype`` (default float32) and in eval mode.
    """
    return load_model(name_or_path, device, dtype), load_tokenizer(name_or_path)


def ground_truth_path(name: str) -> Path | None:
    """Path of the model's ground-truth circuit file, or ``None`` if it ships none.

    Raises:
        ValueError: ``name`` is not a zoo model.
    """
    if name not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; zoo models: {', '.join(list_models())}")
    entry = MODELS[name]
    return entry.path / GROUND_TRUTH_FILE if entry.has_ground_truth else None


def task_options(name: str, task: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``circuits.load_task(task, tokenizer, **options)`` on a zoo model.

    ``task`` defaults to the model's own task (``MODELS[name].task``). Every zoo model
    expects a BOS token first, so ``prepend_bos=True`` always. For the token-level
    ``induction`` task, whose default token pool is a list of English words, the pool is
    the model's own: ``vocab_ids`` = the ids whose vocabulary entry fully matches the
    entry's ``task_tokens`` pattern (read from ``tokenizer.json``).

    Raises:
        ValueError: ``name`` is not a zoo model, or ``task`` needs a token pool the model
            does not define.
    """
    if name not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; zoo models: {', '.join(list_models())}")
    entry = MODELS[name]
    task = entry.task if task is None else task
    options: dict[str, Any] = {"prepend_bos": True}
    if task == "induction":
        if entry.task_tokens is None:
            raise ValueError(f"zoo model {name!r} defines no token pool for the induction task")
        vocab = json.loads((entry.path / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
        pattern = re.compile(entry.task_tokens)
        options["vocab_ids"] = sorted(int(i) for tok, i in vocab.items() if pattern.fullmatch(tok))
    return options
