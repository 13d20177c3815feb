"""Atomic writes and safe reads: a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic_write(path: str | os.PathLike, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file in the same folder, then rename over ``path``."""
    _atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write bytes atomically."""
    _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """``numpy.savez`` (uncompressed, no pickled objects needed to read it back) atomically."""
    import numpy as np

    _atomic_write(path, lambda fh: np.savez(fh, **arrays))


def atomic_write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write pretty JSON atomically."""
    atomic_write_bytes((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), path)


def safe_torch_load(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: truncated, corrupt, or holding arbitrary pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - zip errors, EOF, unpickling refusals
        raise ValueError(f"could not load checkpoint {path}: it is corrupt, truncated, or holds "
                         f"objects other than tensors and plain containers ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path} does not hold a dict")
    return obj
