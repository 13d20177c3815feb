"""Embed a dataset with a model, batched, with a progress bar and an on-disk feature cache.

The cache key hashes the model's weights and config, its preprocessing, the output kind
(pooled features or embedding) and the dataset's fingerprint (ids, labels, and each image file's
size and modification time), so a second run on the same model and data loads in milliseconds
and any change, a repaired image included, recomputes. An entry is checked when read (its
digest, shapes, ids and labels); a damaged one is discarded with a notice and recomputed. A cache
folder that cannot be written means running without the cache, with a notice.

An entry of a dataset of image files also records each embedded item's file (absolute path, size and
modification time), so that pooled features computed for one dataset (``plm train``'s splits) serve
any other set of the same files (``plm embed FOLDER --checkpoint best.pt`` of a frozen-mode run):
:func:`cached_features_of_files`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from plm.data.base import ImageDataset, cache_root, collate_skip
from plm.models.embedding import EmbeddingModel
from plm.models.preprocess import build_transform

log = logging.getLogger(__name__)


@dataclass
class Embeddings:
    """Vectors with their labels and item ids; ``skipped`` lists ids of unreadable images."""

    vectors: np.ndarray
    labels: np.ndarray
    ids: list[str]
    skipped: list[str] = field(default_factory=list)


def default_cache_dir() -> Path:
    """``$PLM_CACHE_DIR/features`` (default ``~/.cache/plm/features``)."""
    return cache_root() / "features"


def model_fingerprint(model: EmbeddingModel) -> str:
    """A hash of the model's config, preprocessing and every parameter and buffer."""
    h = hashlib.sha1(json.dumps([model.config.to_dict(), model.preprocess.to_dict()], sort_keys=True).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def embed_dataset(model: EmbeddingModel, dataset: ImageDataset, batch_size: int = 64, features: bool = False,
                  cache_dir: Optional[str | os.PathLike] | Literal[False] = None, device: str | torch.device = "cpu",
                  num_workers: int = 0, progress: bool = True, amp: Optional[torch.dtype] = None) -> Embeddings:
    """Embed every image of ``dataset`` with the model's own test-time preprocessing.

    Args:
        model: the embedding model (put in eval mode here).
        dataset: any :class:`ImageDataset`.
        batch_size: images per forward pass.
        features: return pooled backbone features instead of the embedding head's output.
        cache_dir: feature cache folder; ``None`` uses :func:`default_cache_dir`, ``False`` disables it.
        device: where to run the model.
        num_workers: DataLoader workers decoding images.
        progress: show progress (:func:`plm.utils.progress.progress`: a bar on a terminal, lines in a log).
        amp: autocast dtype (``torch.bfloat16`` / ``torch.float16``, see :func:`plm.utils.device.amp_dtype`);
            ``None`` runs in full precision. Vectors are returned as float32 either way.
    """
    from plm.utils.device import autocast
    from plm.utils.progress import progress as progress_bar

    kind = "features" if features else "embeddings"
    if amp is not None:  # reduced-precision vectors are cached apart from full-precision ones
        kind += "-" + str(amp).removeprefix("torch.")
    dim = model.feature_dim if features else model.out_dim
    cache_file = None
    if cache_dir is not False:
        folder = Path(cache_dir) if cache_dir else default_cache_dir()
        cache_file = folder / (f"{dataset.name}-{dataset.split}-{kind}-{model_fingerprint(model)}-"
                               f"{dataset.fingerprint()}.npz")
        if cache_file.is_file():
            cached = _read_cache(cache_file, dataset, dim)
            if cached is not None:
                return cached
        if not _writable_cache(folder):
            cache_file = None
    model = model.to(device).eval()
    transform_before = dataset.transform
    dataset.transform = build_transform(model.preprocess, train=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate_skip, pin_memory=torch.device(device).type == "cuda")
    vecs, kept = [], []
    bar = progress_bar(total=len(dataset), desc=f"embed {dataset.name}/{dataset.split}", unit="img",
                       disable=not progress, leave=False)
    try:
        for images, _, indices, skipped in loader:
            bar.update(len(indices) + int(skipped[0]))  # images per second, whatever the batch size
            if len(indices) == 0:
                continue
            images = images.to(device, non_blocking=True)
            with autocast(device, amp):
                out = model.features(images) if features else model(images)
            vecs.append(out.float().cpu().numpy())
            kept.append(indices.numpy())
    finally:
        bar.close()
        dataset.transform = transform_before
    vectors = np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)
    kept_idx = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    missing = np.setdiff1d(np.arange(len(dataset)), kept_idx)
    result = Embeddings(vectors.astype(np.float32), dataset.labels[kept_idx], [dataset.ids[i] for i in kept_idx],
                        [dataset.ids[i] for i in missing])
    if cache_file is not None:
        from plm.errors import OutputError
        from plm.utils.io import atomic_write_npz

        files = _file_stamps(dataset, kept_idx)
        try:
            atomic_write_npz(cache_file, vectors=result.vectors, labels=result.labels,
                             ids=np.array(result.ids, dtype=str), skipped=np.array(result.skipped, dtype=str),
                             digest=np.array(_digest(result, files)), **_file_arrays(files))
        except OutputError as err:
            log.warning("feature cache not written (%s); continuing without it", err)
    return result


FileStamps = Optional[tuple[list[str], np.ndarray]]  #: (absolute paths, (N, 2) int64 sizes and mtimes), or None


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        return -1, -1


def _resolved(path: str | os.PathLike) -> str:
    """``path`` made absolute with its links followed (as it is, absolute, when that fails: a link loop)."""
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError):
        return os.path.abspath(path)


def _file_stamps(dataset: ImageDataset, rows: np.ndarray) -> FileStamps:
    """The file, size and modification time of each item at ``rows`` (``None`` unless all are files)."""
    files = [dataset.file_of(int(i)) for i in rows]
    if not files or any(f is None for f in files):
        return None
    paths = [_resolved(f) for f in files if f is not None]
    return paths, np.array([_stamp(Path(p)) for p in paths], dtype=np.int64).reshape(-1, 2)


def _file_arrays(files: FileStamps) -> dict[str, np.ndarray]:
    return {} if files is None else {"files": np.array(files[0], dtype=str), "file_stamps": files[1]}


def _digest(emb: Embeddings, files: FileStamps = None) -> str:
    """A hash of everything a cache entry holds (checked when it is read)."""
    h = hashlib.sha1(np.ascontiguousarray(emb.vectors, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(emb.labels, dtype=np.int64).tobytes())
    h.update("\n".join(emb.ids).encode("utf-8", "surrogateescape"))
    h.update(b"\0" + "\n".join(emb.skipped).encode("utf-8", "surrogateescape"))
    if files is not None:  # entries written before files were recorded keep their digest
        h.update(b"\0" + "\n".join(files[0]).encode("utf-8", "surrogateescape"))
        h.update(np.ascontiguousarray(files[1], dtype=np.int64).tobytes())
    return h.hexdigest()


def cached_features_of_files(model: EmbeddingModel, files: list[Path], amp: Optional[torch.dtype] = None,
                             cache_dir: Optional[str | os.PathLike] = None) -> dict[int, np.ndarray]:
    """Pooled features of ``model`` (``features=True``) that the cache holds for these image files.

    Every cache entry of this model's features (any dataset, any split) that recorded its files is read;
    an item is taken when its file has the size and modification time it had when it was embedded.
    A damaged entry is skipped.

    Returns:
        {position in ``files``: its (feature_dim,) float32 vector}.
    """
    kind = "features" + ("" if amp is None else "-" + str(amp).removeprefix("torch."))
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    wanted: dict[str, int] = {}
    for i, f in enumerate(files):
        wanted.setdefault(_resolved(f), i)
    found: dict[int, np.ndarray] = {}
    if not wanted or not folder.is_dir():
        return found
    for entry in sorted(folder.glob(f"*-{kind}-{model_fingerprint(model)}-*.npz")):
        try:
            with np.load(entry, allow_pickle=False) as z:
                if "files" not in z.files:
                    continue
                emb = Embeddings(np.asarray(z["vectors"]), np.asarray(z["labels"]), [str(s) for s in z["ids"]],
                                 [str(s) for s in z["skipped"]])
                stamps = (list(map(str, z["files"])), np.asarray(z["file_stamps"], dtype=np.int64))
                ok = str(z["digest"]) == _digest(emb, stamps) and emb.vectors.ndim == 2 \
                    and emb.vectors.shape[1] == model.feature_dim and len(stamps[0]) == len(emb.vectors)
        except Exception:  # noqa: BLE001 - a damaged entry serves nothing; embed_dataset replaces it when it reads it
            continue
        if not ok:
            continue
        for row, (path, stamp) in enumerate(zip(stamps[0], stamps[1], strict=True)):
            pos = wanted.get(path)
            if pos is not None and pos not in found and _stamp(Path(path)) == tuple(int(v) for v in stamp) \
                    and np.isfinite(emb.vectors[row]).all():
                found[pos] = emb.vectors[row]
    return found


def _cache_problem(emb: Embeddings, digest: str, dataset: ImageDataset, dim: int,
                   files: FileStamps = None) -> Optional[str]:
    """Why a cache entry cannot be trusted for ``dataset`` (``None`` when it can)."""
    v = emb.vectors
    if v.dtype != np.float32 or v.ndim != 2 or v.shape[1] != dim:
        return f"vectors are {v.dtype} {v.shape}, expected float32 (N, {dim})"
    if not (len(v) == len(emb.labels) == len(emb.ids)):
        return "vectors, labels and ids differ in length"
    if digest != _digest(emb, files):
        return "its content does not match its digest"
    position = {item: i for i, item in enumerate(dataset.ids)}
    pos = [position.get(item, -1) for item in emb.ids]
    if -1 in pos or sorted(emb.ids + emb.skipped) != sorted(dataset.ids) or pos != sorted(pos):
        return "its items are not the dataset's"
    if not np.array_equal(emb.labels, dataset.labels[np.asarray(pos, dtype=np.int64)]):
        return "its labels are not the dataset's"
    if not np.isfinite(v).all():
        return "it holds non-finite values"
    return None


def _read_cache(path: Path, dataset: ImageDataset, dim: int) -> Optional[Embeddings]:
    """The cached embeddings at ``path``, or ``None`` (the entry discarded, with a notice) when damaged."""
    try:
        with np.load(path, allow_pickle=False) as z:
            emb = Embeddings(np.asarray(z["vectors"]), np.asarray(z["labels"]), [str(s) for s in z["ids"]],
                             [str(s) for s in z["skipped"]])
            digest = str(z["digest"])
            files = (list(map(str, z["files"])), np.asarray(z["file_stamps"])) if "files" in z.files else None
        problem = _cache_problem(emb, digest, dataset, dim, files)
    except Exception as err:  # noqa: BLE001 - truncated, zero-byte, random bytes, BadZipFile, EOFError, missing keys
        problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
    if problem is None:
        return emb
    log.warning("feature cache entry %s is damaged (%s): discarded, recomputing", path.name, problem)
    try:
        path.unlink()
    except OSError:
        pass
    return None


_UNWRITABLE_NOTED: set[str] = set()


def _writable_cache(folder: Path) -> bool:
    """Whether the cache folder can be created and written (a notice, once per folder, when not)."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".plm-write-check.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError as err:
        from plm.utils.io import describe_os_error

        if str(folder) not in _UNWRITABLE_NOTED:
            _UNWRITABLE_NOTED.add(str(folder))
            log.warning("feature cache folder %s cannot be written (%s): running without a cache "
                        "(set PLM_CACHE_DIR to a writable folder to keep features between runs)",
                        folder, describe_os_error(err))
        return False
