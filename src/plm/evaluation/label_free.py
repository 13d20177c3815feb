"""Label-free scores of an embedding: what a run without validation labels can measure.

- :func:`knn_agreement`: how much of each item's neighbourhood survives augmentation. For every
  item, its ``k`` nearest other items are found from the clean image and again from an augmented
  view of it (searching the clean items, itself excluded); the score is the mean share of
  neighbours the two lists have in common. An embedding that keeps what an image shows and
  ignores how it was cropped, flipped or coloured scores high.
- :func:`effective_rank`: ``exp`` of the entropy of the normalised singular values of the
  (centred) embeddings, the RankMe measure of Garrido et al. (2023): how many directions the
  embedding uses.

docs/results.md measures how well each tracks validation MAP@R across epochs and runs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from plm.neighbors.exact import knn_tensors


def knn_agreement(clean: Tensor, views: Tensor, k: int = 10) -> float:
    """Mean share of an item's ``k`` nearest clean neighbours that its augmented view also has.

    Args:
        clean: (N, D) embeddings of the clean images.
        views: (N, D) embeddings of one augmented view of each image (row i is a view of image i).
        k: neighbours compared per item (capped at N − 1).

    Raises:
        ValueError: shapes differ, or fewer than 2 items.
    """
    if clean.shape != views.shape or clean.ndim != 2:
        raise ValueError(f"clean and views must be (N, D) of one shape; got {tuple(clean.shape)} and "
                         f"{tuple(views.shape)}")
    n = clean.shape[0]
    if n < 2:
        raise ValueError("knn_agreement needs at least 2 items")
    k = min(k, n - 1)
    clean, views = clean.float(), views.float()
    own = knn_tensors(clean, None, k, exclude_self=True)[1]
    seen = knn_tensors(views, clean, k, exclude=torch.arange(n, device=clean.device))[1]
    return float((own[:, :, None] == seen[:, None, :]).any(-1).float().mean())


def effective_rank(x: Tensor) -> float:
    """RankMe: ``exp(−Σ p log p)`` with p the singular values of the centred (N, D) ``x`` over their sum."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"effective_rank needs (N >= 2, D) embeddings; got {tuple(x.shape)}")
    xc = x.double() - x.double().mean(0)
    s = torch.linalg.svdvals(xc)
    total = float(s.sum())
    if total <= 0:
        return 1.0
    p = s / total
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))
