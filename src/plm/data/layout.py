"""Reading the official index files of the benchmark datasets, with errors that name the layout."""

from __future__ import annotations

import os
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import Optional

from plm.data.base import DatasetNotFoundError


def find_root(root: str | os.PathLike, marker: str, subfolder: str, layout: str) -> Path:
    """The dataset folder: ``root`` itself, or ``root/subfolder``, whichever holds ``marker``.

    Raises:
        DatasetNotFoundError: neither does; the message shows the expected ``layout``.
    """
    root = Path(root).expanduser()
    for folder in (root, root / subfolder):
        if (folder / marker).is_file():
            return folder
    what = "does not exist" if not root.exists() else f"has no {marker}"
    raise DatasetNotFoundError(f"{root} {what}. Expected layout (pass the top folder as --data-root):\n{layout}")


def read_rows(path: Path, columns: int, layout: str, header: bool = False) -> list[list[str]]:
    """Whitespace-separated rows of exactly ``columns`` fields (the last one may hold spaces).

    Blank lines are ignored. ``header``: the file may start with a header line, recognised by its
    content (its first field is not an integer, as in "image_id class_id …"), and dropped; a file
    without it loses no row.

    Raises:
        DatasetNotFoundError: the file is missing.
        ValueError: a row has too few fields (the message names file and line).
    """
    if not path.is_file():
        raise DatasetNotFoundError(f"missing index file {path}. Expected layout:\n{layout}")
    rows: list[list[str]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        seen_header = not header
        for number, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            if not seen_header:
                seen_header = True
                first = line.split(maxsplit=1)[0]
                if not first.lstrip("+-").isdigit():
                    continue
            fields = line.split(maxsplit=columns - 1)
            if len(fields) != columns:
                raise ValueError(f"{path}:{number}: expected {columns} fields, got {len(fields)}: {line[:80]!r}")
            rows.append(fields)
    return rows


def check_folders(base: Path, relpaths: Sequence[str], layout: str) -> None:
    """Every folder that the index entries start with (``car_ims/``, ``bicycle_final/``…) exists
    under ``base``, and ``base`` itself.

    Raises:
        DatasetNotFoundError: one is missing; the message shows the expected layout.
    """
    if not base.is_dir():
        raise DatasetNotFoundError(f"missing image folder {base}. Expected layout:\n{layout}")
    tops = sorted({p.replace("\\", "/").split("/", 1)[0] for p in relpaths if "/" in p.replace("\\", "/")})
    missing = [t for t in tops if not (base / t).is_dir()]
    if missing:
        names = ", ".join(f"{t}/" for t in missing[:3]) + (" …" if len(missing) > 3 else "")
        raise DatasetNotFoundError(f"missing image folder(s) {names} under {base} ({len(missing)} of the "
                                   f"{len(tops)} the index names). Expected layout:\n{layout}")


def to_int(value: str, path: Path, what: str) -> int:
    """``int(value)`` with an error naming the file and the field."""
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path}: {what} must be an integer, got {value!r}") from None


def check_split_not_empty(n: int, name: str, split: str, root: Path, classes: Optional[Sized] = None) -> None:
    """Raise a clear error for an empty split (e.g. ``val`` without ``--val-classes``)."""
    if n == 0:
        hint = " (the val split needs --val-classes N > 0)" if split == "val" else ""
        found = f"; classes present: {len(classes)}" if classes is not None else ""
        raise ValueError(f"{name}: the {split!r} split of {root} holds no images{hint}{found}")
