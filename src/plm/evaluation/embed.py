"""Embed a dataset with a model, batched, with a progress bar and an on-disk feature cache.

The cache key hashes the model's weights and config, its preprocessing, the output kind
(pooled features or embedding) and the dataset's fingerprint, so a second run on the same model
and data loads in milliseconds and any change recomputes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from plm.data.base import ImageDataset, collate_skip
from plm.models.embedding import EmbeddingModel
from plm.models.preprocess import build_transform


@dataclass
class Embeddings:
    """Vectors with their labels and item ids; ``skipped`` lists ids of unreadable images."""

    vectors: np.ndarray
    labels: np.ndarray
    ids: list[str]
    skipped: list[str] = field(default_factory=list)


def default_cache_dir() -> Path:
    """``$PLM_CACHE_DIR/features`` (default ``~/.cache/plm/features``)."""
    return Path(os.environ.get("PLM_CACHE_DIR", Path.home() / ".cache" / "plm")) / "features"


def model_fingerprint(model: EmbeddingModel) -> str:
    """A hash of the model's config, preprocessing and every parameter and buffer."""
    h = hashlib.sha1(json.dumps([model.config.to_dict(), model.preprocess.to_dict()], sort_keys=True).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def embed_dataset(model: EmbeddingModel, dataset: ImageDataset, batch_size: int = 64, features: bool = False,
                  cache_dir: Optional[str | os.PathLike] | bool = None, device: str | torch.device = "cpu",
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
    cache_file = None
    if cache_dir is not False:
        folder = Path(cache_dir) if cache_dir else default_cache_dir()
        cache_file = folder / f"{dataset.name}-{dataset.split}-{kind}-{model_fingerprint(model)}-{dataset.fingerprint()}.npz"
        if cache_file.is_file():
            with np.load(cache_file, allow_pickle=False) as z:
                return Embeddings(z["vectors"], z["labels"], [str(s) for s in z["ids"]], [str(s) for s in z["skipped"]])
    model = model.to(device).eval()
    transform_before = dataset.transform
    dataset.transform = build_transform(model.preprocess, train=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate_skip, pin_memory=torch.device(device).type == "cuda")
    vecs, kept = [], []
    try:
        for images, _, indices, _ in progress_bar(loader, desc=f"embed {dataset.name}/{dataset.split}", unit="batch",
                                                  disable=not progress, leave=False):
            if len(indices) == 0:
                continue
            images = images.to(device, non_blocking=True)
            with autocast(device, amp):
                out = model.features(images) if features else model(images)
            vecs.append(out.float().cpu().numpy())
            kept.append(indices.numpy())
    finally:
        dataset.transform = transform_before
    dim = model.backbone.feature_dim if features else model.out_dim
    vectors = np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)
    kept_idx = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    missing = np.setdiff1d(np.arange(len(dataset)), kept_idx)
    result = Embeddings(vectors.astype(np.float32), dataset.labels[kept_idx], [dataset.ids[i] for i in kept_idx],
                        [dataset.ids[i] for i in missing])
    if cache_file is not None:
        from plm.utils.io import atomic_write_npz

        atomic_write_npz(cache_file, vectors=result.vectors, labels=result.labels, ids=np.array(result.ids, dtype=str),
                         skipped=np.array(result.skipped, dtype=str))
    return result
