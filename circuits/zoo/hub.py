"""Models named by their Hugging Face hub id (``Qwen/Qwen2.5-0.5B``).

A hub id resolves to its snapshot folder in the local Hugging Face cache (``HF_HOME``, or
``HF_HUB_CACHE``), which then loads like any local folder. A cached snapshot is used without
touching the network; otherwise the config, weights and tokenizer files are downloaded first,
unless ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set or the hub cannot be reached, in
which case a one-line ``ValueError`` says the model is not in the local cache and how to put
it there.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

__all__ = ["hub_snapshot", "looks_like_hub_id", "offline"]

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")

#: files fetched besides the weights: config, tokenizer, generation config
_SMALL_FILES = ("*.json", "tokenizer.model", "*.txt", "*.tiktoken", "spiece.model")
_SAFETENSORS = ("model*.safetensors", "model.safetensors.index.json")
_BIN = ("pytorch_model*.bin", "pytorch_model.bin.index.json")


def looks_like_hub_id(name: object) -> bool:
    """``owner/name`` with hub-legal characters (call it only for names that are not local folders)."""
    return isinstance(name, str) and _HUB_ID.fullmatch(name) is not None and ".." not in name


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` asks for no network access."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _not_cached(repo_id: str, why: str) -> ValueError:
    return ValueError(
        f"{repo_id!r} is not a local folder, and as a Hugging Face model it is not in the local cache "
        f"({_cache_dir()}) while {why}; on a machine with internet run `huggingface-cli download {repo_id}` "
        "and copy that cache here (or set HF_HOME to a cache that holds it), or pass a local model folder")


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("model*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


@functools.lru_cache(maxsize=16)
def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot folder of hub model ``repo_id``, downloading it when needed and allowed.

    Raises:
        ValueError: not cached and offline or unreachable; no such (or a gated) model on the hub.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    cached = None
    try:
        cached = Path(snapshot_download(repo_id, local_files_only=True))  # no network
    except (LocalEntryNotFoundError, OSError):
        pass
    if cached is not None and (cached / "config.json").is_file() and _has_weights(cached):
        return cached
    if offline():
        why = "HF_HUB_OFFLINE is set" if cached is None else "HF_HUB_OFFLINE is set (only part of it is cached)"
        raise _not_cached(repo_id, why)
    try:
        files = _repo_files(repo_id)
        weights = _SAFETENSORS if any(f.endswith(".safetensors") for f in files) else _BIN
        return Path(snapshot_download(repo_id, allow_patterns=[*_SMALL_FILES, *weights]))
    except GatedRepoError:
        raise ValueError(f"{repo_id} is a gated model: accept its licence at https://huggingface.co/{repo_id} "
                         "and log in with `huggingface-cli login` (or set HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise ValueError(f"{repo_id!r} is neither a local folder nor a model on the Hugging Face hub (if it is "
                         "private, log in with `huggingface-cli login`)") from None
    except Exception as err:  # no connection: huggingface_hub raises its HTTP client's errors as they come
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        raise _not_cached(repo_id, f"the hub cannot be reached ({reason})") from None


def _repo_files(repo_id: str) -> list[str]:
    from huggingface_hub import HfApi

    return list(HfApi().list_repo_files(repo_id))
