"""Embed an image folder incrementally: only new or changed files go through the model.

A file is reused from the previous embeddings file when the model fingerprint and the folder
are the same, its size and modification time are unchanged and its stored vector is usable
(finite, not all zeros; a bad stored row is recomputed); deleted files are dropped.
Unreadable files (zero-byte, truncated, not an image, dangling or looping symbolic links,
no read permission) are skipped and listed, and are not retried until they change; so is a file
whose freshly computed vector is not finite or all zeros.

The model runs in two parts: its backbone's pooled features, then its head. Features the feature
cache holds for these very files (same backbone weights, same file size and time: e.g. those
``plm train`` cached for a frozen-mode run) are taken from it, so ``plm embed FOLDER --checkpoint
best.pt`` of such a run only applies the trained head (:func:`features_then_head`).
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, cast

import numpy as np

from plm.data.base import IMAGE_EXTENSIONS
from plm.search.queries import readable
from plm.search.store import EmbeddingStore

log = logging.getLogger(__name__)


@dataclass
class EmbedStats:
    """What one :func:`embed_folder` run did.

    Attributes:
        total: image files found (by extension).
        embedded: files decoded and embedded in this run.
        reused: vectors kept from the previous file.
        dropped: previous entries whose files are gone.
        skipped: unreadable files (all of them, including ones skipped before).
        ignored: files without an image extension (never opened).
        reason: why nothing was reused, when a previous file existed but could not be used.
        skipped_reasons: ``path -> error`` for files newly found unreadable in this run.
        cached_features: of the files embedded in this run, those whose backbone features came from the
            feature cache (only the head ran for them).
    """

    total: int = 0
    embedded: int = 0
    reused: int = 0
    dropped: int = 0
    skipped: int = 0
    ignored: list[str] = field(default_factory=list)
    reason: str = ""
    skipped_reasons: dict[str, str] = field(default_factory=dict)
    cached_features: int = 0


def non_image_files(root: str | os.PathLike) -> list[str]:
    """Relative paths of visible files under ``root`` without an image extension (sorted)."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [(Path(dirpath) / n).relative_to(root).as_posix() for n in filenames
                  if not n.startswith(".") and not n.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _reuse_reason(previous: EmbeddingStore, identity: dict[str, Any], root: str) -> str:
    if previous.model.get("fingerprint") != identity["fingerprint"]:
        from plm.search.identity import describe

        return f"the model changed (was {describe(previous.model)}, now {describe(identity)})"
    if previous.root != root:
        return f"the folder changed (was {previous.root}, now {root})"
    return ""


def embed_folder(model: Any, root: str | os.PathLike, identity: dict[str, Any],
                 previous: Optional[EmbeddingStore] = None, batch_size: int = 64,
                 progress: bool = True, device: Any = "cpu", amp: Any = None,
                 num_workers: int = 0, cache_dir: Any = None, ctx: Any = None) -> tuple[EmbeddingStore, EmbedStats]:
    """Embed every image under ``root`` (recursive), reusing unchanged entries of ``previous``.

    Args:
        model: the :class:`~plm.models.EmbeddingModel`.
        root: the image folder; first-level sub-folders become labels when every image is in one.
        identity: the model's record from :func:`plm.search.identity.model_identity`.
        previous: the embeddings file of an earlier run, or ``None``.
        batch_size: images per forward pass.
        progress: show progress.
        device: where the model runs.
        amp: autocast dtype or ``None`` (see :func:`plm.evaluation.embed_dataset`).
        num_workers: DataLoader workers decoding images.
        cache_dir: the feature cache read for these files' backbone features (``None``: the default one,
            ``False``: none).
        ctx: a :class:`~plm.training.distributed.DistContext` of several processes (``torchrun … -m plm
            embed``): every rank finds the same files to embed, embeds its contiguous share of them, and all
            shares are gathered, so every rank returns the whole store (rank 0 writes it). ``None``: one process.

    Raises:
        DatasetNotFoundError: ``root`` is missing or holds no image files.
    """
    from plm.data.folder import load_image_folder

    dataset = load_image_folder(root)
    root_abs = str(Path(root).resolve())
    stats = EmbedStats(total=len(dataset), ignored=non_image_files(root))
    stamps = []
    for p, rel in zip(dataset.paths, dataset.ids, strict=True):
        try:
            st = p.stat()
        except OSError:  # a dangling or looping symbolic link: stamp the link itself, skip it below
            try:
                st = (Path(root) / rel).lstat()
            except OSError:
                stamps.append((-1, -1))
                continue
        stamps.append((int(st.st_size), int(st.st_mtime_ns)))

    reuse: dict[str, tuple[int, int, int]] = {}  # path -> (size, mtime, row in previous.vectors)
    known_bad: dict[str, tuple[int, int]] = {}
    if previous is not None:
        stats.reason = _reuse_reason(previous, identity, root_abs)
        if not stats.reason:
            usable = ~previous.bad_rows()  # NaN, infinite or all-zero rows are recomputed
            reuse = {p: (int(s), int(m), i) for i, (p, s, m) in
                     enumerate(zip(previous.paths, previous.sizes, previous.mtimes_ns, strict=True)) if usable[i]}
            known_bad = {p: (int(s), int(m)) for p, s, m in
                         zip(previous.skipped, previous.skipped_sizes, previous.skipped_mtimes_ns, strict=True)}
        current = set(dataset.ids)
        stats.dropped = sum(1 for p in previous.paths if p not in current)

    rows: list[Optional[np.ndarray]] = [None] * len(dataset)
    bad: set[int] = set()
    todo = []
    for i, (rel, stamp) in enumerate(zip(dataset.ids, stamps, strict=True)):
        if rel in reuse and reuse[rel][:2] == stamp:
            rows[i] = previous.vectors[reuse[rel][2]]  # type: ignore[union-attr]
        elif known_bad.get(rel) == stamp:
            bad.add(i)
        else:
            todo.append(i)
    stats.reused = len(dataset) - len(todo) - len(bad)

    if todo:
        several = ctx is not None and ctx.enabled
        mine = [todo[i] for i in ctx.shard(len(todo))] if several else todo
        emb, stats.cached_features = features_then_head(model, dataset.subset(mine), batch_size=batch_size,
                                                        progress=progress and (not several or ctx.is_main),
                                                        device=device, amp=amp, num_workers=num_workers,
                                                        cache_dir=cache_dir)
        if several:
            emb, stats.cached_features = _gather(ctx, emb, stats.cached_features, dataset, device)
        row_of = {rel: v for rel, v in zip(emb.ids, emb.vectors, strict=True)}
        for i in todo:
            rel = dataset.ids[i]
            if rel in row_of and np.isfinite(row_of[rel]).all() and (row_of[rel] != 0).any():
                rows[i] = row_of[rel]
            elif rel in row_of:
                bad.add(i)
                stats.skipped_reasons[rel] = "the model gave a NaN, infinite or all-zero vector"
            else:
                bad.add(i)
                stats.skipped_reasons[rel] = _why_unreadable(Path(root) / rel)
        stats.embedded = len(emb.ids) - sum(1 for i in todo if i in bad and dataset.ids[i] in row_of)
    stats.skipped = len(bad)

    good = [i for i in range(len(dataset)) if i not in bad]
    dim = int(identity["dim"])
    # every row outside ``bad`` was reused or embedded above
    kept = [cast(np.ndarray, rows[i]) for i in good]
    vectors = np.stack(kept).astype(np.float32) if good else np.zeros((0, dim), np.float32)
    bad_sorted = sorted(bad)
    store = EmbeddingStore(
        vectors=vectors, paths=[dataset.ids[i] for i in good], labels=dataset.labels[good],
        sizes=np.array([stamps[i][0] for i in good], np.int64),
        mtimes_ns=np.array([stamps[i][1] for i in good], np.int64),
        root=root_abs, model=identity, class_names=dict(dataset.class_names or {}),
        skipped=[dataset.ids[i] for i in bad_sorted],
        skipped_sizes=np.array([stamps[i][0] for i in bad_sorted], np.int64),
        skipped_mtimes_ns=np.array([stamps[i][1] for i in bad_sorted], np.int64))
    return store, stats


def _gather(ctx: Any, emb: Any, cached: int, dataset: Any, device: Any) -> tuple[Any, int]:
    """Every rank's embedded rows (and cache hits), in rank order, on every rank."""
    import torch

    from plm.evaluation.embed import Embeddings

    where = torch.device(device) if torch.device(device).type == "cuda" else torch.device("cpu")  # NCCL: on the GPU
    index_of = {rel: i for i, rel in enumerate(dataset.ids)}
    rows = torch.tensor([index_of[rel] for rel in emb.ids], dtype=torch.long, device=where)
    vectors = ctx.gather_uneven(torch.from_numpy(np.ascontiguousarray(emb.vectors)).to(where)).cpu().numpy()
    rows_all = ctx.gather_uneven(rows).cpu().numpy()
    hits = int(ctx.all_reduce_sum(torch.tensor([cached], dtype=torch.long, device=where)).item())
    return Embeddings(vectors, dataset.labels[rows_all], [dataset.ids[int(i)] for i in rows_all]), hits


def features_then_head(model: Any, dataset: Any, batch_size: int = 64, progress: bool = True, device: Any = "cpu",
                       amp: Any = None, num_workers: int = 0, cache_dir: Any = None) -> tuple[Any, int]:
    """``model``'s embeddings of ``dataset``: its backbone's pooled features (from the feature cache where it
    holds them for these files, else computed), then its head.

    Returns:
        (:class:`~plm.evaluation.embed.Embeddings` in dataset order, how many features came from the cache).
    """
    import torch

    from plm.evaluation import embed_dataset
    from plm.evaluation.embed import Embeddings, cached_features_of_files
    from plm.models import EmbeddingModel, ModelConfig

    cfg = model.config
    features_model = EmbeddingModel(model.backbone, ModelConfig(backbone=cfg.backbone, embed_dim=None,
                                                                pooling=cfg.pooling, normalize=False,
                                                                image_size=cfg.image_size))
    files = [dataset.file_of(i) for i in range(len(dataset))]
    hits = {} if cache_dir is False or any(f is None for f in files) else \
        cached_features_of_files(features_model, files, amp=amp, cache_dir=cache_dir)
    rest = [i for i in range(len(dataset)) if i not in hits]
    feats: dict[int, np.ndarray] = dict(hits)
    skipped: list[str] = []
    if rest:
        part = dataset.subset(rest)
        emb = embed_dataset(features_model, part, batch_size=batch_size, features=True, cache_dir=False,
                            progress=progress, device=device, amp=amp, num_workers=num_workers)
        position = {item: rest[j] for j, item in enumerate(part.ids)}
        feats.update({position[item]: v for item, v in zip(emb.ids, emb.vectors, strict=True)})
        skipped = emb.skipped
    kept = sorted(feats)
    dim = int(model.out_dim)
    if not kept:
        return Embeddings(np.zeros((0, dim), np.float32), dataset.labels[:0], [], skipped), len(hits)
    head = model.head.eval()
    where = next(head.parameters(), torch.empty(0)).device
    with torch.no_grad():
        x = torch.from_numpy(np.stack([feats[i] for i in kept]).astype(np.float32)).to(where)
        vectors = head(x).float().cpu().numpy()
    return Embeddings(vectors.astype(np.float32), dataset.labels[kept], [dataset.ids[i] for i in kept],
                      skipped), len(hits)


def _why_unreadable(path: Path) -> str:
    try:
        if path.stat().st_size == 0:
            return "zero-byte file"
    except OSError as err:
        if path.is_symlink():
            return "symbolic link loop" if err.errno == errno.ELOOP else "dangling symbolic link"
        return err.strerror or str(err)
    return readable(path) or "could not be decoded"
