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

Reading checks, before loading any array, every member's header (:mod:`plm.utils.npzfile`: no
pickles, sizes consistent, no zip bombs, within memory), then the arrays' dtypes and shapes and
the metadata's types (:mod:`plm.search.checks`); any problem is one :class:`UserError` naming the
file. Vectors that are NaN, infinite or all zeros are *not* refused here (``plm embed`` recomputes
them, ``plm index`` refuses them): see :meth:`EmbeddingStore.bad_rows`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from plm.errors import UserError
from plm.search.checks import ArraySpec, FileProblem, bad_rows, check_class_names, check_common_meta, check_members

FORMAT, VERSION = "plm-embeddings", 1
ARRAYS: ArraySpec = {"vectors": ("f", 2), "paths": ("U", 1), "labels": ("iu", 1), "sizes": ("iu", 1),
                     "mtimes_ns": ("iu", 1), "skipped": ("U", 1), "skipped_sizes": ("iu", 1),
                     "skipped_mtimes_ns": ("iu", 1)}
MAX_META_BYTES = 64 << 20


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

    def bad_rows(self) -> np.ndarray:
        """Boolean mask of the rows that cannot be searched: NaN, infinite or all-zero vectors."""
        nonfinite, zero = bad_rows(self.vectors)
        return nonfinite | zero

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
    def load(cls, path: str | os.PathLike) -> EmbeddingStore:
        """Read a file written by :meth:`save` (never unpickles).

        Raises:
            UserError: missing file, or not a plm embeddings file.
        """
        arrays, meta = read_npz(path, FORMAT, "plm embed FOLDER --out FILE.npz", arrays=ARRAYS)
        try:
            check_common_meta(meta)
            store = cls(vectors=arrays["vectors"], paths=[str(p) for p in arrays["paths"]], labels=arrays["labels"],
                        sizes=arrays["sizes"], mtimes_ns=arrays["mtimes_ns"], root=meta["root"], model=meta["model"],
                        class_names=check_class_names(meta), skipped=[str(p) for p in arrays["skipped"]],
                        skipped_sizes=arrays["skipped_sizes"], skipped_mtimes_ns=arrays["skipped_mtimes_ns"])
            if store.dim != meta["model"]["dim"]:
                raise FileProblem(f"dimension mismatch: the vectors are {store.dim}-d but the recorded model gives "
                                  f"{meta['model']['dim']}-d embeddings")
            return store
        except (KeyError, ValueError) as err:
            raise UserError(f"{path} is an inconsistent plm embeddings file ({err}); re-create it with "
                            f"plm embed --full") from err


def read_npz(path: str | os.PathLike, fmt: str, how_to_make: str, version: int = VERSION,
             arrays: Optional[ArraySpec] = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every array of a plm ``.npz`` file and its decoded ``meta``, checking the format tag.

    The members' headers are checked before anything is loaded (:func:`plm.utils.npzfile.npz_members`),
    then ``meta``, then the dtype and dimension of each array named in ``arrays``.

    Raises:
        UserError: missing file, unreadable, unsafe or oversized ``.npz``, another format, or
            arrays of the wrong kind.
    """
    from plm.utils.npzfile import NpzError, npz_members

    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path} (make one with {how_to_make})")
    try:
        members = npz_members(path)
    except NpzError as err:
        raise UserError(f"{err}; this is not a {fmt} file (make one with {how_to_make})") from err
    info = members.get("meta")
    if info is None or info.dtype.kind != "U" or info.shape != () or info.nbytes > MAX_META_BYTES:
        raise UserError(f"{path} is not a {fmt} file (no JSON meta record); make one with {how_to_make}")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
    except Exception as err:
        raise UserError(f"{path} is not a {fmt} file: its meta record cannot be read ({type(err).__name__}: "
                        f"{err}); make one with {how_to_make}") from err
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise UserError(f"{path} is not a {fmt} file{f' (it is a {found} file)' if isinstance(found, str) else ''}; "
                        f"make one with {how_to_make}")
    ver = meta.get("version", 0)
    if isinstance(ver, bool) or not isinstance(ver, int):
        raise UserError(f"{path} is a damaged {fmt} file: meta.version must be an integer, got {ver!r}; "
                        f"make a new one with {how_to_make}")
    if ver > version:
        raise UserError(f"{path} has {fmt} version {ver}, newer than this plm reads ({version}); upgrade plm")
    try:
        if arrays is not None:
            check_members(members, arrays)
    except FileProblem as err:
        raise UserError(f"{path} is a damaged {fmt} file: {err}; make a new one with {how_to_make}") from err
    try:
        with np.load(path, allow_pickle=False) as z:
            loaded = {k: z[k] for k in z.files if k != "meta"}
    except Exception as err:
        raise UserError(f"{path} is a damaged {fmt} file: its arrays cannot be read ({type(err).__name__}: "
                        f"{err}); make a new one with {how_to_make}") from err
    return loaded, meta
