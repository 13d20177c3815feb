"""The embeddings file written by ``plm embed``: one ``.npz`` (read with ``allow_pickle=False``).

Arrays (N embedded images, S skipped files):

========================  ===========  ==================================================
key                       dtype        content
========================  ===========  ==================================================
``vectors``               float32      (N, D) embeddings, row i belongs to ``paths[i]``
``paths``                 unicode      (N,) paths relative to the folder, POSIX ``/``, sorted
``labels``                int64        (N,) class index from the first-level sub-folder, -1 if none
``sizes``                 int64        (N,) file size in bytes when embedded
``mtimes_ns``             int64        (N,) modification time (ns) when embedded
``skipped``               unicode      (S,) unreadable files (zero-byte, truncated, not an image)
``skipped_sizes``         int64        (S,)
``skipped_mtimes_ns``     int64        (S,)
``meta``                  unicode      0-d JSON string, see below
========================  ===========  ==================================================

``meta`` = ``{"format": "plm-embeddings", "version": 1, "root": "/abs/folder",
"model": <identity, see plm.search.identity>, "class_names": {"0": "cats", …}}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plm.errors import UserError

FORMAT, VERSION = "plm-embeddings", 1


@dataclass
class EmbeddingStore:
    """Embeddings of an image folder, with what is needed to update them and to search."""

    vectors: np.ndarray
    paths: list[str]
    labels: np.ndarray
    sizes: np.ndarray
    mtimes_ns: np.ndarray
    root: str
    model: dict[str, Any]
    class_names: dict[int, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    skipped_sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    skipped_mtimes_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        n = len(self.paths)
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or len(self.vectors) != n:
            raise ValueError(f"vectors must be (N, D) with one row per path ({n}), got shape {self.vectors.shape}")
        for name in ("labels", "sizes", "mtimes_ns"):
            arr = np.asarray(getattr(self, name), dtype=np.int64)
            if arr.shape != (n,):
                raise ValueError(f"{name} must have one entry per path ({n}), got shape {arr.shape}")
            setattr(self, name, arr)
        self.skipped_sizes = np.asarray(self.skipped_sizes, dtype=np.int64)
        self.skipped_mtimes_ns = np.asarray(self.skipped_mtimes_ns, dtype=np.int64)
        if not len(self.skipped) == len(self.skipped_sizes) == len(self.skipped_mtimes_ns):
            raise ValueError("skipped, skipped_sizes and skipped_mtimes_ns must have the same length")

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.paths)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.npz`` atomically; returns its path."""
        from plm.utils.io import atomic_write_npz

        meta = {"format": FORMAT, "version": VERSION, "root": self.root, "model": self.model,
                "class_names": {str(k): v for k, v in self.class_names.items()}}
        path = Path(path)
        atomic_write_npz(path, vectors=self.vectors, paths=np.array(self.paths, dtype=str), labels=self.labels,
                         sizes=self.sizes, mtimes_ns=self.mtimes_ns, skipped=np.array(self.skipped, dtype=str),
                         skipped_sizes=self.skipped_sizes, skipped_mtimes_ns=self.skipped_mtimes_ns,
                         meta=np.array(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EmbeddingStore":
        """Read a file written by :meth:`save` (never unpickles).

        Raises:
            UserError: missing file, or not a plm embeddings file.
        """
        arrays, meta = read_npz(path, FORMAT, "plm embed FOLDER --out FILE.npz")
        try:
            return cls(vectors=arrays["vectors"], paths=[str(p) for p in arrays["paths"]], labels=arrays["labels"],
                       sizes=arrays["sizes"], mtimes_ns=arrays["mtimes_ns"], root=meta["root"], model=meta["model"],
                       class_names={int(k): v for k, v in meta.get("class_names", {}).items()},
                       skipped=[str(p) for p in arrays["skipped"]], skipped_sizes=arrays["skipped_sizes"],
                       skipped_mtimes_ns=arrays["skipped_mtimes_ns"])
        except (KeyError, ValueError) as err:
            raise UserError(f"{path} is an inconsistent plm embeddings file ({err}); re-create it with plm embed") from err


def read_npz(path: str | os.PathLike, fmt: str, how_to_make: str, version: int = VERSION) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every array of a plm ``.npz`` file and its decoded ``meta``, checking the format tag.

    Raises:
        UserError: missing file, unreadable ``.npz``, or another format.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path} (make one with {how_to_make})")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta"))) if "meta" in arrays else None
    except Exception as err:  # noqa: BLE001 - zip, EOF, pickle refusal, JSON: all "not our file"
        raise UserError(f"{path} is not a {fmt} file: it cannot be read as one ({type(err).__name__}: {err}); "
                        f"make one with {how_to_make}") from err
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise UserError(f"{path} is not a {fmt} file{f' (it is a {found} file)' if found else ''}; "
                        f"make one with {how_to_make}")
    if int(meta.get("version", 0)) > version:
        raise UserError(f"{path} has {fmt} version {meta.get('version')}, newer than this plm reads ({version}); "
                        f"upgrade plm")
    return arrays, meta
