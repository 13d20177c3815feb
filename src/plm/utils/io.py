"""Atomic writes and safe reads: a crash never leaves a half-written file under the final name.

Files are written to a hidden temporary file next to the target (``.NAME.XXXXXXXX.tmp``) and
renamed over it; the result has the permissions the umask gives (an existing file keeps its
own). A write that fails (permission, read-only file system, disk full, file-size limit) raises
:class:`plm.errors.OutputError` naming the path and the cause, and leaves the previous file
intact. :func:`remove_stale_temp_files` cleans up what a killed process left behind.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Optional

import torch

from plm.errors import OutputError

#: the temporary files of :func:`_atomic_write` (``tempfile.mkstemp`` adds 8 random characters)
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")

_CAUSES = {
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (the file-size limit was reached)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "file name too long",
}


def describe_os_error(err: OSError) -> str:
    """A short cause for a failed file operation (``disk full``, ``permission denied`` …)."""
    if err.errno is not None and err.errno in _CAUSES:
        return _CAUSES[err.errno]
    return err.strerror or type(err).__name__


def write_error(path: str | os.PathLike, err: OSError) -> OutputError:
    """The one-line :class:`OutputError` for a failed write of ``path``."""
    return OutputError(f"cannot write {path}: {describe_os_error(err)}")


def _file_mode(path: Path) -> int:
    """The mode of the existing ``path``, else what the umask gives a new file (0644 under 022)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


class _RecordingWriter:
    """A file wrapper that remembers the OSError of a failed write, so a library that turns it into
    its own error (PyTorch's ``[enforce fail at inline_container.cc]``) cannot hide the cause."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.error: Optional[OSError] = None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.fh.flush()


def _atomic_write(path: str | os.PathLike, write, wrap: bool = False) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(path, err) from None
    recorder = None
    try:
        os.fchmod(fd, _file_mode(path))
        with os.fdopen(fd, "wb") as fh:
            recorder = _RecordingWriter(fh) if wrap else None
            write(recorder or fh)
            fh.flush()
            os.fsync(fh.fileno())
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = err if isinstance(err, OSError) else getattr(recorder, "error", None)
        if cause is not None and isinstance(err, (OSError, RuntimeError)):
            raise write_error(path, cause) from None
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file in the same folder, then rename over ``path``."""
    _atomic_write(path, lambda fh: torch.save(obj, fh), wrap=True)


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed :func:`_atomic_write` left in ``folder``; returns them."""
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        if _TEMP_NAME.match(p.name) and p.is_file() and not p.is_symlink():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


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


def torch_load_error(path: str | os.PathLike, err: BaseException, what: str = "checkpoint") -> ValueError:
    """The one-line error for a failed ``torch.load(weights_only=True)`` of ``path``.

    A file holding pickled Python objects is refused as such (plm loads tensors only); anything
    else is corrupt or truncated. PyTorch's own multi-line advice is never repeated.
    """
    text = str(err)
    if "global" in text.lower() and "weights only load failed" in text.lower():
        return ValueError(f"{path} holds pickled Python objects, not only tensors; plm loads tensors and plain "
                          f"containers only and will not run code from a {what} file")
    first = text.strip().splitlines()[0] if text.strip() else ""
    if "weights only load failed" in first.lower():
        first = "not a tensor file"
    return ValueError(f"could not load {what} {path}: it is corrupt, truncated, or not a {what} file "
                      f"({type(err).__name__}{': ' + first[:200] if first else ''})")


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
        raise torch_load_error(path, err) from None
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path} does not hold a dict")
    return obj
