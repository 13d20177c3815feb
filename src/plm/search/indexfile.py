"""The index file written by ``plm index``: one ``.npz`` (read with ``allow_pickle=False``).

Arrays (N indexed images):

============  =========  ===============================================================
key           dtype      content
============  =========  ===============================================================
``paths``     unicode    (N,) image paths relative to ``meta.root``; id i is ``paths[i]``
``labels``    int64      (N,) class index from the sub-folder, -1 if none
``vectors``   float32    (N, D) the (unit-normalised for cosine) vectors — exact kind only
``faiss``     uint8      ``faiss.serialize_index`` bytes — ``hnsw``, ``ivf``, ``pq`` kinds only
``meta``      unicode    0-d JSON string, see below
============  =========  ===============================================================

``meta`` = ``{"format": "plm-index", "version": 1, "index": {"kind", "metric", "dim", "count",
"params", "sha256"}, "root": "/abs/folder", "model": <identity>, "class_names": {...},
"embeddings": "/abs/embeddings.npz", "recall": [{"param", "value", "recall", "qps"}, ...]}``.

``index.sha256`` is the SHA-256 of the stored ``vectors`` or ``faiss`` bytes: an index whose data
was changed after it was written (a damaged HNSW graph loses images from every result without
any other sign) is refused. Files written before it existed are read without this check.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plm.errors import UserError
from plm.search.checks import ArraySpec, FileProblem, bad_rows, check_class_names, check_common_meta, check_index_info
from plm.search.index import KINDS, METRICS, VectorIndex
from plm.search.store import read_npz

FORMAT, VERSION = "plm-index", 1
ARRAYS: ArraySpec = {"paths": ("U", 1), "labels": ("iu", 1)}
KIND_ARRAYS: dict[str, ArraySpec] = {"exact": {"vectors": ("f", 2)}, "hnsw": {"faiss": ("u", 1)},
                                     "ivf": {"faiss": ("u", 1)}, "pq": {"faiss": ("u", 1)}}


def payload_digest(arrays: dict[str, np.ndarray]) -> str:
    """The SHA-256 (hex) of an index's stored arrays (``vectors`` or ``faiss``), names and bytes in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


@dataclass
class SearchIndex:
    """A :class:`VectorIndex` with its path table, labels, folder and model identity."""

    index: VectorIndex
    paths: list[str]
    labels: np.ndarray
    root: str
    model: dict[str, Any]
    class_names: dict[int, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not len(self.paths) == len(self.labels) == self.index.count:
            raise ValueError(f"index has {self.index.count} vectors but {len(self.paths)} paths and "
                             f"{len(self.labels)} labels")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.npz`` atomically; returns its path."""
        from plm.utils.io import atomic_write_npz

        arrays = self.index.to_arrays()
        info = {**self.index.describe(), "sha256": payload_digest(arrays)}
        meta = {"format": FORMAT, "version": VERSION, "index": info, "root": self.root,
                "model": self.model, "class_names": {str(k): v for k, v in self.class_names.items()}, **self.extra}
        path = Path(path)
        atomic_write_npz(path, paths=np.array(self.paths, dtype=str), labels=self.labels,
                         meta=np.array(json.dumps(meta)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SearchIndex:
        """Read a file written by :meth:`save` (never unpickles).

        Raises:
            UserError: missing, unreadable, foreign or inconsistent file.
        """
        how = "plm index EMBEDDINGS.npz --out INDEX.npz"
        arrays, meta = read_npz(path, FORMAT, how, VERSION, arrays=ARRAYS)
        try:
            check_common_meta(meta)
            check_index_info(meta.get("index"), KINDS, METRICS)
            info = meta["index"]
            for name, (kinds, ndim) in KIND_ARRAYS[info["kind"]].items():
                a = arrays.get(name)
                if a is None or a.dtype.kind not in kinds or a.ndim != ndim:
                    raise FileProblem(f"a {info['kind']} index needs a {ndim}-d array {name!r}"
                                      + ("" if a is None else f", got a {a.dtype} array of shape {a.shape}"))
            if info["dim"] != meta["model"]["dim"]:
                raise FileProblem(f"dimension mismatch: the index holds {info['dim']}-d vectors "
                                  f"but the recorded model gives {meta['model']['dim']}-d embeddings")
            if info["kind"] == "exact":
                nonfinite, zero = bad_rows(arrays["vectors"])
                if nonfinite.any():
                    raise FileProblem(f"{int(nonfinite.sum())} stored vector(s) hold NaN or infinite values")
            recorded = info.get("sha256")  # before faiss reads the bytes
            if recorded is not None and recorded != payload_digest({k: arrays[k] for k in KIND_ARRAYS[info["kind"]]}):
                raise FileProblem(f"its stored {' and '.join(KIND_ARRAYS[info['kind']])} array does not match the "
                                  f"checksum recorded when it was written (the file was changed or damaged)")
            index = VectorIndex.from_arrays(info, arrays)
            extra = {k: v for k, v in meta.items()
                     if k not in ("format", "version", "index", "root", "model", "class_names")}
            return cls(index=index, paths=[str(p) for p in arrays["paths"]], labels=arrays["labels"],
                       root=meta["root"], model=meta["model"], class_names=check_class_names(meta), extra=extra)
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise UserError(f"{path} is an inconsistent plm index file ({err}); rebuild it with plm index") from err
