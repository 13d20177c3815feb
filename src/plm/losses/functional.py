"""The functional layer of :mod:`plm.losses`: loss terms on student embeddings against (detached) targets.

Every pair loss takes the rows of *this* process (``z``, shape (R, d)) and the columns of the
whole batch (``z_all``, (B, d)), with ``row_start`` the global index of the first local row, so
pairs (i, j) with ``row_start + i == j`` are skipped. Each returns ``sum / denom``; ``denom``
defaults to the number of local terms (a plain mean). In distributed training every rank passes
the *global* count, so the ranks' losses add up to the mean over the global batch. With R = B and
``row_start = 0`` they are the plain single-process losses.

Distances come from inner products (no (R, B, d) tensor) under a clamped square root, so
coincident points (a duplicate image in a batch) give zero gradient instead of NaN.

``exclude_self=False`` (rows against a separate reference set, no pair is a self-pair) keeps every
(i, j) pair. The single-process modules (:mod:`plm.losses.modules`) call these.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_EPS = 1e-12


def pairwise_distance(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances (R, C) between rows of ``a`` (R, d) and ``b`` (C, d), gradient-safe at 0."""
    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1).unsqueeze(0) - 2.0 * (a @ b.T)
    return d2.clamp_min(_EPS).sqrt()


def _offdiag_mask(rows: int, cols: int, row_start: int, device: torch.device, exclude_self: bool = True) -> Tensor:
    if not exclude_self:
        return torch.ones(rows, cols, dtype=torch.bool, device=device)
    r = torch.arange(rows, device=device).unsqueeze(1) + row_start
    c = torch.arange(cols, device=device).unsqueeze(0)
    return r != c


def _check_pairs(z: Tensor, z_all: Tensor, target: Tensor, row_start: int, exclude_self: bool = True) -> None:
    if z.ndim != 2 or z_all.ndim != 2 or z.shape[1] != z_all.shape[1]:
        raise ValueError(f"expected (R, d) rows and (B, d) columns, got {tuple(z.shape)} and {tuple(z_all.shape)}")
    if target.shape != (z.shape[0], z_all.shape[0]):
        raise ValueError(f"target must be (R, B) = {(z.shape[0], z_all.shape[0])}, got {tuple(target.shape)}")
    if exclude_self and not 0 <= row_start <= z_all.shape[0] - z.shape[0]:
        raise ValueError(f"row_start {row_start} out of range for {z.shape[0]} rows in a batch of {z_all.shape[0]}")


def balanced_pair_weights(target: Tensor, row_start: int = 0, exclude_self: bool = True) -> Tensor:
    """Per-pair weights that give each row's similar and dissimilar pairs equal total weight.

    w_ij = ½·(s_ij / S⁺_i + (1 − s_ij) / S⁻_i)·(B − 1) with S⁺_i = Σ_{j≠i} s_ij and
    S⁻_i = Σ_{j≠i} (1 − s_ij): a row's weights average to 1, the few similar pairs of a row count
    as much as its many dissimilar ones. Zero on the diagonal.

    Args:
        target: (R, B) detached similarities in [0, 1].
        row_start: global index of the first row (its diagonal entry is at column row_start + r).
        exclude_self: ``False`` when the columns are another set (no diagonal; a row's weights
            then average to 1 over all its B columns).
    """
    t = target.detach()
    mask = _offdiag_mask(t.shape[0], t.shape[1], row_start, t.device, exclude_self).to(t.dtype)
    pos = (t * mask).sum(1, keepdim=True).clamp_min(_EPS)
    neg = ((1.0 - t) * mask).sum(1, keepdim=True).clamp_min(_EPS)
    pairs = t.shape[1] - 1 if exclude_self else t.shape[1]
    return 0.5 * (t / pos + (1.0 - t) / neg) * pairs * mask


def point_loss(z: Tensor, z_all: Tensor, target: Tensor, delta: float = 1.5, row_start: int = 0,
               denom: Optional[float] = None, weights: Optional[Tensor] = None, exclude_self: bool = True) -> Tensor:
    """L_point = mean over pairs i ≠ j of w_ij·(δ·(1 − s_ij) − ‖z_i − z_j‖)² (w = 1 by default).

    Args:
        z: (R, d) student embeddings of the local rows.
        z_all: (B, d) student embeddings of the whole batch (columns).
        target: (R, B) target similarities s_ij in [0, 1] (detached).
        delta: δ, the distance of a pair with similarity 0.
        row_start: global index of the first local row.
        denom: normaliser of the sum; default R·(B−1) minus nothing (the local pair count).
        weights: optional (R, B) detached per-pair weights (e.g. :func:`balanced_pair_weights`).
        exclude_self: skip the pairs (i, row_start + i); ``False`` when the columns are another set.
    """
    _check_pairs(z, z_all, target, row_start, exclude_self)
    mask = _offdiag_mask(z.shape[0], z_all.shape[0], row_start, z.device, exclude_self)
    err = (delta * (1.0 - target.detach()) - pairwise_distance(z, z_all)).pow(2)
    if weights is not None:
        err = err * weights.detach()
    total = err.masked_select(mask).sum()
    return total / (denom if denom is not None else max(int(mask.sum()), 1))


def proxy_loss(z: Tensor, locations: Tensor, target: Tensor, delta: float = 1.5,
               denom: Optional[float] = None) -> Tensor:
    """L_proxy = mean over i, k of (δ·(1 − s_ik) − ‖z_i − ρ_k‖)² (docs/method.md §6).

    Args:
        z: (R, d) student embeddings.
        locations: (K, d) proxy locations ρ_k (gradient flows into them).
        target: (R, K) detached point-to-proxy similarities s_ik.
        delta: δ.
        denom: normaliser of the sum; default R·K.
    """
    if target.shape != (z.shape[0], locations.shape[0]):
        raise ValueError(f"target must be (R, K) = {(z.shape[0], locations.shape[0])}, got {tuple(target.shape)}")
    err = (delta * (1.0 - target.detach()) - pairwise_distance(z, locations)).pow(2)
    return err.sum() / (denom if denom is not None else max(err.numel(), 1))


def proxy_contrastive_loss(z: Tensor, locations: Tensor, target: Tensor, delta: float = 1.0,
                           denom: Optional[float] = None) -> Tensor:
    """Relaxed contrastive loss of points against proxies: Σ_{i,k} w_ik·d_ik² + (1 − w_ik)·[δ − d_ik]₊²,
    each distance divided by the mean of its row (over the K proxies), over the pair count.

    Args:
        z: (R, d) student embeddings; locations: (K, d) proxies; target: (R, K) weights in [0, 1].
        delta: δ, the push margin on row-normalised distances.
        denom: normaliser of the sum; default R·K.
    """
    if target.shape != (z.shape[0], locations.shape[0]):
        raise ValueError(f"target must be (R, K) = {(z.shape[0], locations.shape[0])}, got {tuple(target.shape)}")
    d = pairwise_distance(z, locations)
    d = d / d.mean(1, keepdim=True).clamp_min(_EPS)
    w = target.detach()
    per_pair = w * d.pow(2) + (1.0 - w) * torch.relu(delta - d).pow(2)
    return per_pair.sum() / (denom if denom is not None else max(per_pair.numel(), 1))


def neighborhood_loss(points: Tensor, locations: Tensor, bases: Tensor, similarity: Tensor, n: int = 4,
                      lam: float = 0.5, radius: Optional[float] = None) -> Tensor:
    """L_neighbourhood: each proxy's piece is pulled toward its n most similar points (docs/method.md §6).

    For proxy k and each of the ``n`` points x with the largest (detached) s_ik:
    ‖(x − ρ_k) − W_k W_kᵀ(x − ρ_k)‖² + λ‖x − ρ_k‖², averaged over proxies and points.
    Gradient flows into ρ_k and W_k only (the points are detached).

    Args:
        points: (P, d) embeddings of the batch.
        locations: (K, d) ρ_k.
        bases: (K, d, m) orthonormal W_k (e.g. from :meth:`ProxyBank.orthonormal_bases`).
        similarity: (P, K) point-to-proxy similarities used only to pick the points.
        n: points per proxy (at most P).
        lam: λ, weight of the squared distance to ρ_k.
        radius: when given, only chosen points within this distance of ρ_k count (a proxy with
            none contributes nothing); the mean is over the points that count.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if similarity.shape != (points.shape[0], locations.shape[0]):
        raise ValueError(f"similarity must be (P, K) = {(points.shape[0], locations.shape[0])}, "
                         f"got {tuple(similarity.shape)}")
    n = min(n, points.shape[0])
    idx = similarity.detach().topk(n, dim=0).indices.T  # (K, n)
    r = points.detach()[idx] - locations.unsqueeze(1)  # (K, n, d)
    coords = torch.einsum("knd,kdm->knm", r, bases)
    r2 = r.pow(2).sum(-1)
    # ‖r − W Wᵀr‖² = ‖r‖² − ‖Wᵀr‖² for orthonormal W: no (K, n, d) residual, forward or backward
    per_point = (r2 - coords.pow(2).sum(-1)).clamp_min(0.0) + lam * r2
    if radius is None:
        return per_point.mean()
    near = (r.detach().pow(2).sum(-1) <= radius * radius).to(per_point.dtype)
    return (per_point * near).sum() / near.sum().clamp_min(1.0)


def relaxed_contrastive_loss(z: Tensor, z_all: Tensor, target: Tensor, delta: float = 1.0, row_start: int = 0,
                             denom: Optional[float] = None, normalize_rows: bool = True,
                             exclude_self: bool = True) -> Tensor:
    """Relaxed contrastive loss (STML): Σ_{i≠j} w_ij·d_ij² + (1 − w_ij)·[δ − d_ij]₊², over the pair count.

    With ``normalize_rows`` each distance is divided by the mean of its row (over all B columns,
    the zero self-distance included, as in STML); without it this is the classic contrastive loss
    with soft labels and margin δ.

    Args:
        z: (R, d) student rows; z_all: (B, d) student columns; target: (R, B) weights w_ij in [0, 1].
        delta: δ, the push margin.
        row_start: global index of the first local row.
        denom: normaliser of the sum; default the local pair count.
        normalize_rows: divide distances by their row mean.
        exclude_self: skip the pairs (i, row_start + i); ``False`` when the columns are another set.
    """
    _check_pairs(z, z_all, target, row_start, exclude_self)
    d = pairwise_distance(z, z_all)
    mask = _offdiag_mask(z.shape[0], z_all.shape[0], row_start, z.device, exclude_self)
    d = d * mask  # exact zero self-distance
    if normalize_rows:
        d = d / d.mean(1, keepdim=True).clamp_min(_EPS)
    w = target.detach()
    per_pair = w * d.pow(2) + (1.0 - w) * torch.relu(delta - d).pow(2)
    total = per_pair.masked_select(mask).sum()
    return total / (denom if denom is not None else max(int(mask.sum()), 1))


def contrastive_loss(z: Tensor, z_all: Tensor, target: Tensor, margin: float = 1.0, row_start: int = 0,
                     denom: Optional[float] = None, exclude_self: bool = True) -> Tensor:
    """Contrastive loss on (pseudo-)label pairs: pull same-label pairs, push others beyond ``margin``.

    ``target`` is 1 for a positive pair and 0 for a negative one (soft values also work).
    """
    return relaxed_contrastive_loss(z, z_all, target, delta=margin, row_start=row_start, denom=denom,
                                    normalize_rows=False, exclude_self=exclude_self)
