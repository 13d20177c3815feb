"""Duplicates in an indexed collection (``plm duplicates``): exact copies by content, near copies by distance.

- Exact: files with the same bytes (same size, then the same SHA-256), whatever their names.
- Near: images whose embeddings lie within ``threshold`` of each other (the index's own distance:
  ``1 - cosine similarity`` for plm embeddings), joined transitively into groups (each image's ``k``
  nearest are looked at). A group whose images all have the same bytes is an exact group only.

:data:`DEFAULT_THRESHOLD` (0.03) is measured (``python -m benchmarks.bench_duplicates``, docs/search.md,
"Duplicates"): with ``plm embed``'s default model, photo-sized copies re-saved as JPEG at quality 85
(at most 0.024), resized to 75% (0.007) or made 10% brighter (0.006) lie within it of their originals,
while the nearest distinct image lay further in every measured set but one pair of neighbouring tiles
of one photo (0.026; Fashion-MNIST's nearest distinct pair: 0.078). Quality-60 re-saves, 4% crops and
halvings (up to 0.055 at photo size, more for small images) need a larger ``--threshold``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional

import numpy as np

from plm.evaluation.defaults import NEAR_DUPLICATE_DISTANCE as DEFAULT_THRESHOLD
from plm.utils.paths import Kind, json_format, read_head

FORMAT = "plm-duplicates"
__all__ = ["DEFAULT_THRESHOLD", "Group", "exact_groups", "near_groups", "write_csv", "write_json"]


@dataclass
class Group:
    """One set of duplicates: the ids, and for near groups each id's distance to its nearest member."""

    ids: list[int]
    kind: str
    distances: list[float] = field(default_factory=list)
    sha256: str = ""
    size: int = -1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def exact_groups(root: Path, paths: list[str]) -> tuple[list[Group], list[str]]:
    """Files under ``root`` with identical bytes (hashed only where two files share a size).

    Returns:
        the groups (largest first, then by first path), and the paths that could not be read.
    """
    by_size: dict[int, list[int]] = {}
    unreadable = []
    for i, rel in enumerate(paths):
        try:
            by_size.setdefault((root / PurePosixPath(rel)).stat().st_size, []).append(i)
        except OSError:
            unreadable.append(rel)
    groups = []
    for size, ids in by_size.items():
        if len(ids) < 2:
            continue
        by_hash: dict[str, list[int]] = {}
        for i in ids:
            try:
                by_hash.setdefault(_sha256(root / PurePosixPath(paths[i])), []).append(i)
            except OSError:
                unreadable.append(paths[i])
        groups += [Group(sorted(same), "exact", sha256=digest, size=size) for digest, same in by_hash.items()
                   if len(same) > 1]
    groups.sort(key=lambda g: (-len(g.ids), paths[g.ids[0]]))
    return groups, unreadable


def near_groups(index: Any, threshold: float, k: int = 10, exact: Optional[list[Group]] = None,
                block: int = 4096) -> tuple[list[Group], int]:
    """Images within ``threshold`` of each other (transitively), from each one's ``k`` nearest.

    Args:
        index: the :class:`~plm.search.VectorIndex`.
        threshold: the largest distance (the index's reported distance) of a near pair.
        k: neighbours looked at per image.
        exact: the exact groups; a near group of copies of one file only is left out.
        block: images searched at a time (memory).

    Returns:
        the groups (largest first), and how many images had all ``k`` looked-at neighbours within the
        threshold (their group may hold more: raise ``k``).
    """
    n = index.count
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    nearest = np.full(n, np.inf)
    saturated = 0
    k = max(1, min(int(k), n - 1))
    for start in range(0, n, block):
        stop = min(n, start + block)
        dist, ids = index.search(index.vectors_of(start, stop), k, exclude=np.arange(start, stop))
        close = (ids >= 0) & (dist <= threshold)
        saturated += int(close.all(axis=1).sum()) if n > k + 1 else 0
        for r, c in zip(*np.nonzero(close), strict=True):
            i, j = start + int(r), int(ids[r, c])
            nearest[i] = min(nearest[i], float(dist[r, c]))
            nearest[j] = min(nearest[j], float(dist[r, c]))
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for i in range(n):
        if np.isfinite(nearest[i]):
            members.setdefault(find(i), []).append(i)
    same_file = {i: g.sha256 for g in (exact or []) for i in g.ids}
    groups = []
    for ids_ in members.values():
        if len(ids_) < 2 or (same_file.get(ids_[0]) and all(same_file.get(i) == same_file[ids_[0]] for i in ids_)):
            continue
        groups.append(Group(sorted(ids_), "near", [float(nearest[i]) for i in sorted(ids_)]))
    groups.sort(key=lambda g: (-len(g.ids), g.ids[0]))
    return groups, saturated


def write_json(path: str | os.PathLike, groups: list[Group], paths: list[str], meta: dict[str, Any]) -> None:
    """The groups as JSON: ``{"format", "version", **meta, "exact": [...], "near": [...]}``."""
    from plm.utils.io import atomic_write_json

    def one(g: Group) -> dict[str, Any]:
        if g.kind == "exact":
            return {"paths": [paths[i] for i in g.ids], "size": g.size, "sha256": g.sha256}
        return {"paths": [paths[i] for i in g.ids], "distances": g.distances}

    atomic_write_json({"format": FORMAT, "version": 1, **meta,
                       "exact": [one(g) for g in groups if g.kind == "exact"],
                       "near": [one(g) for g in groups if g.kind == "near"]}, path)


def write_csv(path: str | os.PathLike, groups: list[Group], paths: list[str]) -> None:
    """One row per image of each group: ``group,kind,path,distance`` (the distance to its nearest other member;
    0 for exact copies). Text cells that a spreadsheet would run as a formula get a leading ``'``."""
    from plm.search.export import FORMULA_STARTS
    from plm.utils.io import atomic_write_bytes
    from plm.utils.paths import display_path

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(["group", "kind", "path", "distance"])
    for n, g in enumerate(groups, 1):
        for j, i in enumerate(g.ids):
            name = display_path(paths[i])
            writer.writerow([n, g.kind, "'" + name if name.startswith(FORMULA_STARTS) else name,
                             f"{g.distances[j]:.6g}" if g.kind == "near" else "0"])
    atomic_write_bytes(buf.getvalue().encode("utf-8"), path)


DUPLICATES_JSON = Kind("a plm duplicates JSON report", lambda p: json_format(p) == FORMAT, (".json",))
DUPLICATES_CSV = Kind("a plm duplicates CSV", lambda p: read_head(p, 32).startswith(b"group,kind,path,distance"),
                      (".csv",))
