"""Reading ``.npz`` archives safely: every member's header is checked before any array is loaded.

``numpy.load`` allocates an array as soon as it is asked for, whatever the archive holds, so a
2 MB file whose members inflate to gigabytes (a zip bomb), or whose headers claim arrays far
larger than the file, would cost that memory before failing. :func:`npz_members` reads only the
zip directory and each member's ``.npy`` header (shape, dtype; through ``numpy.lib.format``), and
refuses, with a message naming the file:

* members that are not ``.npy`` arrays, or hold Python objects (pickles);
* headers that disagree with the member's size (truncated or forged data);
* compressed members that inflate more than :data:`MAX_RATIO` times to more than
  :data:`BOMB_MIN_BYTES` (plm writes uncompressed archives);
* archives whose arrays add up to more than ``max_bytes`` (default: the machine's physical memory).
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from numpy.lib import format as npy_format

MAX_RATIO = 100
BOMB_MIN_BYTES = 64 << 20


class NpzError(ValueError):
    """An ``.npz`` archive that is unreadable, unsafe or too large; the message names the file."""


@dataclass(frozen=True)
class Member:
    """One array of an archive, as its header declares it."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int


def physical_memory() -> Optional[int]:
    """Bytes of physical memory, or ``None`` when the system does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _size(n: int) -> str:
    size: float = n
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def npz_members(path: str | os.PathLike, max_bytes: Optional[int] = None) -> dict[str, Member]:
    """The arrays of an ``.npz`` archive by name (``"meta"`` for ``meta.npy``), from headers only.

    Args:
        path: the archive.
        max_bytes: refuse archives whose arrays need more memory than this (default: physical memory).

    Raises:
        NpzError: not a readable archive, an unsafe or inconsistent member, or too large.
    """
    path = Path(path)
    limit = physical_memory() if max_bytes is None else max_bytes
    try:
        file_size = path.stat().st_size
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError) as err:
        raise NpzError(f"{path} is not a readable .npz archive ({type(err).__name__}: {err})") from err
    members: dict[str, Member] = {}
    total = 0
    with zf:
        for info in zf.infolist():
            name = info.filename
            if not name.endswith(".npy"):
                raise NpzError(f"{path}: member {name!r} is not a NumPy array")
            if info.compress_size > file_size:
                raise NpzError(f"{path}: member {name!r} claims {_size(info.compress_size)} in a file of "
                               f"{_size(file_size)} (truncated or forged)")
            if (info.compress_type != zipfile.ZIP_STORED and info.file_size > BOMB_MIN_BYTES
                    and info.file_size > MAX_RATIO * max(1, info.compress_size)):
                raise NpzError(f"{path}: member {name!r} inflates from {_size(info.compress_size)} to "
                               f"{_size(info.file_size)} (a zip bomb?); refusing to unpack it")
            try:
                with zf.open(info) as fh:
                    version = npy_format.read_magic(fh)
                    if version == (1, 0):
                        shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
                    else:
                        raise ValueError(f"unsupported .npy format version {version}")
                    header_len = fh.tell()
            except Exception as err:
                raise NpzError(f"{path}: member {name!r} has no readable array header "
                               f"({type(err).__name__}: {err})") from err
            if dtype.hasobject:
                raise NpzError(f"{path}: member {name!r} holds Python objects (a pickle); plm reads plain "
                               f"arrays only")
            nbytes = math.prod(int(s) for s in shape) * int(dtype.itemsize)
            if header_len + nbytes != info.file_size:
                raise NpzError(f"{path}: member {name!r} declares a {dtype} array of shape {tuple(shape)} "
                               f"({_size(nbytes)}) but holds {_size(max(0, info.file_size - header_len))} of data "
                               f"(truncated or forged)")
            total += nbytes
            if limit is not None and total > limit:
                raise NpzError(f"{path}: its arrays need more than {_size(total)}, more than this machine's "
                               f"{_size(limit)} of memory; refusing to load it")
            members[name[:-4]] = Member(name[:-4], tuple(int(s) for s in shape), dtype, nbytes)
    return members
