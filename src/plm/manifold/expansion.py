"""Neighbourhood expansion of a batch similarity (query expansion over the nearest batch points).

A batch is made of seeds and their nearest neighbours, so every point arrives with a small group
of look-alikes. The expanded similarity lets that group vote: row i becomes the mean of the rows
of i's ``k`` nearest batch points (i itself included), and the result is symmetrised,

    s̃ = ½ (A s + (A s)ᵀ),   A_iq = 1/k for q ∈ N_k(i), else 0,   s̃(i, i) = 1.

The nearest points are ranked by cosine similarity of the inputs (i first; equal values keep batch
order). It is the PL counterpart of STML's query expansion, applied to the whole PL similarity
rather than to k-reciprocal sets (docs/results.md, "Neighbourhood expansion").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nearest_rows(points: Tensor, k: int) -> Tensor:
    """(N, k) long: each point's ``k`` nearest points by cosine similarity, itself first."""
    if points.ndim != 2:
        raise ValueError(f"expected (N, d) points, got shape {tuple(points.shape)}")
    n = points.shape[0]
    k = min(int(k), n)
    x = F.normalize(points.detach().to(torch.float64), dim=1)
    cos = x @ x.T
    cos.fill_diagonal_(float("inf"))
    return torch.argsort(cos, dim=1, descending=True, stable=True)[:, :k]


@torch.no_grad()
def expanded_similarity(s: Tensor, points: Tensor, k: int) -> Tensor:
    """s̃ = ½(A s + (A s)ᵀ) with A the mean over each point's ``k`` nearest points; diagonal 1.

    Args:
        s: (N, N) symmetric similarities of the points.
        points: (N, d) the points (their cosine similarity ranks the neighbours).
        k: neighbours averaged, the point itself included; ``k <= 1`` returns ``s`` unchanged.

    Raises:
        ValueError: mismatched shapes.
    """
    n = points.shape[0]
    if s.shape != (n, n):
        raise ValueError(f"similarity of shape {tuple(s.shape)} for {n} points")
    if k <= 1 or n == 0:
        return s
    idx = nearest_rows(points, k)
    q = s[idx].mean(1)  # (N, N): row i = mean of the rows of N_k(i)
    out = 0.5 * (q + q.T)
    out.fill_diagonal_(1.0)
    return out
