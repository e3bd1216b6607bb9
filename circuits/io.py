"""Atomic file writing: a file (or a folder of files) the user asked for is either written whole or not at all."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def check_target(path: Path, overwrite: bool) -> None:
    """Raise ``FileExistsError`` when ``path`` exists and may not be replaced, or is a folder."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --force) to replace it")
    if path.exists() and path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, expected a file path")


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it over ``path``.

    The parent folder is created if missing. On any exception (including Ctrl-C) the
    temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the mode an ordinary open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """Yield an empty hidden sibling folder of ``out`` to write files into; on success move every file
    written there into ``out`` (created if missing), on any exception (including Ctrl-C) leave ``out``
    untouched. The staging folder is always removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield stage
        out.mkdir(exist_ok=True)
        for f in sorted(stage.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8); returns the path."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def json_safe(x: Any) -> Any:
    """Replace NaN/inf floats by None, numpy/tensor scalars by Python ones, recursively (strict JSON)."""
    import numpy as np  # here, not at module level: this module stays importable without numpy/torch loaded
    import torch

    def safe(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): safe(w) for k, w in v.items()}
        if isinstance(v, (list, tuple)):
            return [safe(w) for w in v]
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        if isinstance(v, torch.Tensor):
            return safe(v.tolist())
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    return safe(x)
