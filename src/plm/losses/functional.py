"""The functional layer of :mod:`plm.losses`: loss terms on student embeddings against (detached) targets.

Called on one process, a pair loss reads like its module: ``point_loss(z, target, delta)`` scores
the batch ``z`` (B, d) against itself, the self-pairs (i, i) left out, as the mean over pairs.

Distributed training splits a batch's rows among processes. One value, :class:`Rows`, says which
rows of the global batch these are (their first global index), whether the self-pairs are skipped
and the count the sum is divided by (the *global* pair count, so that the processes' losses add up
to the mean over the global batch); the columns are then the whole batch (``columns``, (B, d)). The
trainer builds it once per step (:meth:`Rows.of_process`); single-process calls leave it out.

Distances come from inner products (no (R, B, d) tensor) under a clamped square root, so
coincident points (a duplicate image in a batch) give zero gradient instead of NaN.

Rows against a separate reference set (no pair is a self-pair) use ``Rows.reference()``. The
single-process modules (:mod:`plm.losses.modules`) call these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

_EPS = 1e-12


@dataclass(frozen=True)
class Rows:
    """These rows of a batch of B: which pairs a pair loss sums and what it divides the sum by.

    Attributes:
        start: global index of the first row (row r's self-pair is column ``start + r``).
        denom: the count the sum is divided by; ``None`` = the number of pairs summed here (a mean).
        exclude_self: skip the self-pairs; ``False`` when the columns are another set.
        world_size: processes the batch is split among; a term that every process computes whole
            from the global batch (the proxies' neighbourhood term) counts 1/world_size on each.
    """

    start: int = 0
    denom: Optional[float] = None
    exclude_self: bool = True
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.start < 0:
            raise ValueError(f"start must be >= 0, got {self.start}")
        if self.denom is not None and not self.denom > 0:
            raise ValueError(f"denom must be positive, got {self.denom}")
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")

    @classmethod
    def of_process(cls, start: int, batch_size: int, world_size: int = 1) -> Rows:
        """One process's rows from ``start`` of a global batch of ``batch_size``: divided by the global
        pair count B·(B−1), so the processes' losses add up to the mean over the global batch."""
        return cls(start=start, denom=float(batch_size * (batch_size - 1)), world_size=world_size)

    @classmethod
    def reference(cls) -> Rows:
        """Rows against a separate reference set: every pair counts, a plain mean."""
        return cls(exclude_self=False)

    def slice(self, count: int) -> slice:
        """The global positions of ``count`` rows (to select a (B, ·) target's rows)."""
        return slice(self.start, self.start + count)

    def mask(self, count: int, columns: int, device: torch.device) -> Tensor:
        """(count, columns) bool: the pairs these rows sum (all but the self-pairs)."""
        if not self.exclude_self:
            return torch.ones(count, columns, dtype=torch.bool, device=device)
        r = torch.arange(count, device=device).unsqueeze(1) + self.start
        c = torch.arange(columns, device=device).unsqueeze(0)
        return r != c

    def mean(self, total: Tensor, count: int) -> Tensor:
        """``total`` (a sum over ``count`` pairs) divided by :attr:`denom`, or by ``count``."""
        return total / (self.denom if self.denom is not None else max(count, 1))


#: one process, the batch against itself (the default of every pair loss)
ALL_ROWS = Rows()


def pairwise_distance(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances (R, C) between rows of ``a`` (R, d) and ``b`` (C, d), gradient-safe at 0."""
    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1).unsqueeze(0) - 2.0 * (a @ b.T)
    return d2.clamp_min(_EPS).sqrt()


def _pairs(z: Tensor, columns: Optional[Tensor], target: Tensor, rows: Rows) -> tuple[Tensor, Tensor]:
    """The columns (``z`` itself by default) and the mask of the pairs summed, after checking shapes."""
    cols = z if columns is None else columns
    if z.ndim != 2 or cols.ndim != 2 or z.shape[1] != cols.shape[1]:
        raise ValueError(f"expected (R, d) rows and (B, d) columns, got {tuple(z.shape)} and {tuple(cols.shape)}")
    if target.shape != (z.shape[0], cols.shape[0]):
        raise ValueError(f"target must be (R, B) = {(z.shape[0], cols.shape[0])}, got {tuple(target.shape)}")
    if rows.exclude_self and rows.start > cols.shape[0] - z.shape[0]:
        raise ValueError(f"rows.start {rows.start} out of range for {z.shape[0]} rows in a batch of {cols.shape[0]}")
    return cols, rows.mask(z.shape[0], cols.shape[0], z.device)


def balanced_pair_weights(target: Tensor, rows: Rows = ALL_ROWS) -> Tensor:
    """Per-pair weights that give each row's similar and dissimilar pairs equal total weight.

    w_ij = ½·(s_ij / S⁺_i + (1 − s_ij) / S⁻_i)·(B − 1) with S⁺_i = Σ_{j≠i} s_ij and
    S⁻_i = Σ_{j≠i} (1 − s_ij): a row's weights average to 1, the few similar pairs of a row count
    as much as its many dissimilar ones. Zero on the diagonal.

    Args:
        target: (R, B) detached similarities in [0, 1].
        rows: where these rows sit (their self-pairs are at columns ``rows.start + r``); with
            ``Rows.reference()`` there is no self-pair and a row's weights average to 1 over all B columns.
    """
    t = target.detach()
    mask = rows.mask(t.shape[0], t.shape[1], t.device).to(t.dtype)
    pos = (t * mask).sum(1, keepdim=True).clamp_min(_EPS)
    neg = ((1.0 - t) * mask).sum(1, keepdim=True).clamp_min(_EPS)
    pairs = t.shape[1] - 1 if rows.exclude_self else t.shape[1]
    return 0.5 * (t / pos + (1.0 - t) / neg) * pairs * mask


def point_loss(z: Tensor, target: Tensor, delta: float = 1.5, *, columns: Optional[Tensor] = None,
               rows: Rows = ALL_ROWS, weights: Optional[Tensor] = None) -> Tensor:
    """L_point = mean over pairs i ≠ j of w_ij·(δ·(1 − s_ij) − ‖z_i − z_j‖)² (w = 1 by default).

    Args:
        z: (R, d) student embeddings of the rows.
        target: (R, B) target similarities s_ij in [0, 1] (detached).
        delta: δ, the distance of a pair with similarity 0.
        columns: (B, d) student embeddings of the whole batch; ``None`` = ``z`` itself.
        rows: where the rows sit in the batch, the self-pairs and the divisor (:class:`Rows`).
        weights: optional (R, B) detached per-pair weights (e.g. :func:`balanced_pair_weights`).
    """
    cols, mask = _pairs(z, columns, target, rows)
    err = (delta * (1.0 - target.detach()) - pairwise_distance(z, cols)).pow(2)
    if weights is not None:
        err = err * weights.detach()
    return rows.mean(err.masked_select(mask).sum(), int(mask.sum()))


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
    if similarity.shape != (points.shape[0], locations.shape[0]):
        raise ValueError(f"similarity must be (P, K) = {(points.shape[0], locations.shape[0])}, "
                         f"got {tuple(similarity.shape)}")
    idx = _most_similar(similarity, n)
    r = points.detach()[idx] - locations.unsqueeze(1)  # (K, n, d)
    return _neighbourhood_mean(r.pow(2).sum(-1), torch.einsum("knd,kdm->knm", r, bases), lam, radius)


def neighborhood_loss_from_coordinates(dist2: Tensor, coords: Tensor, similarity: Tensor, n: int = 4,
                                       lam: float = 0.5, radius: Optional[float] = None) -> Tensor:
    """:func:`neighborhood_loss` from every point's squared distance ‖x_i − ρ_k‖² (P, K) and
    coordinates W_kᵀ(x_i − ρ_k) (P, K, m) at every proxy (:meth:`plm.losses.ProxyBank.coordinates`,
    which the proxies' similarity reads too): nothing of size d is gathered, forward or backward.
    """
    if similarity.shape != dist2.shape or coords.shape[:2] != dist2.shape:
        raise ValueError(f"expected (P, K) similarity and distances and (P, K, m) coordinates, got "
                         f"{tuple(similarity.shape)}, {tuple(dist2.shape)} and {tuple(coords.shape)}")
    idx = _most_similar(similarity, n)
    proxy = torch.arange(dist2.shape[1], device=dist2.device)[:, None]
    return _neighbourhood_mean(dist2[idx, proxy], coords[idx, proxy], lam, radius)


def _most_similar(similarity: Tensor, n: int) -> Tensor:
    """(K, n) the ``n`` points most similar to each proxy (columns of a (P, K) similarity)."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    return similarity.detach().topk(min(n, similarity.shape[0]), dim=0).indices.T


def _neighbourhood_mean(r2: Tensor, coords: Tensor, lam: float, radius: Optional[float]) -> Tensor:
    """The neighbourhood term from (K, n) squared distances ‖r‖² and (K, n, m) coordinates Wᵀr."""
    # ‖r − W Wᵀr‖² = ‖r‖² − ‖Wᵀr‖² for orthonormal W: no (K, n, d) residual, forward or backward
    per_point = (r2 - coords.pow(2).sum(-1)).clamp_min(0.0) + lam * r2
    if radius is None:
        return per_point.mean()
    near = (r2.detach() <= radius * radius).to(per_point.dtype)
    return (per_point * near).sum() / near.sum().clamp_min(1.0)


def relaxed_contrastive_loss(z: Tensor, target: Tensor, delta: float = 1.0, *, columns: Optional[Tensor] = None,
                             rows: Rows = ALL_ROWS, normalize_rows: bool = True) -> Tensor:
    """Relaxed contrastive loss (STML): Σ_{i≠j} w_ij·d_ij² + (1 − w_ij)·[δ − d_ij]₊², over the pair count.

    With ``normalize_rows`` each distance is divided by the mean of its row (over all B columns,
    the zero self-distance included, as in STML); without it this is the classic contrastive loss
    with soft labels and margin δ.

    Args:
        z: (R, d) student rows; target: (R, B) weights w_ij in [0, 1].
        delta: δ, the push margin.
        columns: (B, d) student embeddings of the whole batch; ``None`` = ``z`` itself.
        rows: where the rows sit in the batch, the self-pairs and the divisor (:class:`Rows`).
        normalize_rows: divide distances by their row mean.
    """
    cols, mask = _pairs(z, columns, target, rows)
    d = pairwise_distance(z, cols) * mask  # exact zero self-distance
    if normalize_rows:
        d = d / d.mean(1, keepdim=True).clamp_min(_EPS)
    w = target.detach()
    per_pair = w * d.pow(2) + (1.0 - w) * torch.relu(delta - d).pow(2)
    return rows.mean(per_pair.masked_select(mask).sum(), int(mask.sum()))


def contrastive_loss(z: Tensor, target: Tensor, margin: float = 1.0, *, columns: Optional[Tensor] = None,
                     rows: Rows = ALL_ROWS) -> Tensor:
    """Contrastive loss on (pseudo-)label pairs: pull same-label pairs, push others beyond ``margin``.

    ``target`` is 1 for a positive pair and 0 for a negative one (soft values also work).
    """
    return relaxed_contrastive_loss(z, target, margin, columns=columns, rows=rows, normalize_rows=False)
