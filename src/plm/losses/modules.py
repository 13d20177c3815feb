"""Single-process loss modules, called like pytorch-metric-learning's: ``loss = loss_fn(embeddings, target)``.

Each wraps one function of :mod:`plm.losses.functional` (the same math the multi-process trainer
uses). The supervision is a soft target similarity in [0, 1] rather than labels:

- ``target`` (B, B) against the batch itself (``ref_emb=None``; the self-pairs i = j are left out);
- ``target`` (B, M) against ``ref_emb`` (M, d), a separate reference set (every pair counts).

Defaults are those of :class:`plm.losses.LossConfig` (the ``plm train`` defaults).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from plm.losses.config import LossConfig
from plm.losses.functional import (
    ALL_ROWS,
    Rows,
    balanced_pair_weights,
    contrastive_loss,
    neighborhood_loss,
    point_loss,
    proxy_contrastive_loss,
    proxy_loss,
    relaxed_contrastive_loss,
)


def _columns(ref_emb: Optional[Tensor]) -> tuple[Optional[Tensor], Rows]:
    """The columns of the pairs (``None``: the batch itself, self-pairs left out) and their rows."""
    return (None, ALL_ROWS) if ref_emb is None else (ref_emb, Rows.reference())


class PointLoss(nn.Module):
    """L_point: pair distances regress onto δ·(1 − s_ij) (docs/method.md §6).

    Args:
        delta: δ, the distance of a pair with similarity 0.
        balanced: weight each row's similar and dissimilar pairs equally
            (:func:`~plm.losses.functional.balanced_pair_weights`; ``loss.kind=weighted_regression``).
    """

    def __init__(self, delta: float = LossConfig.delta, balanced: bool = False) -> None:
        super().__init__()
        if delta <= 0:
            raise ValueError(f"delta must be positive, got {delta}")
        self.delta, self.balanced = float(delta), bool(balanced)

    def forward(self, embeddings: Tensor, target: Tensor, ref_emb: Optional[Tensor] = None) -> Tensor:
        """Mean over pairs of (δ·(1 − s_ij) − ‖z_i − z_j‖)²; ``target`` (B, B), or (B, M) with ``ref_emb`` (M, d)."""
        cols, rows = _columns(ref_emb)
        weights = balanced_pair_weights(target, rows) if self.balanced else None
        return point_loss(embeddings, target, self.delta, columns=cols, rows=rows, weights=weights)


class RelaxedContrastiveLoss(nn.Module):
    """STML's relaxed contrastive loss with soft weights s_ij: w·d² + (1 − w)·[δ − d]₊² over the pairs.

    Args:
        margin: δ, the push margin (on row-mean-normalised distances with ``normalize_rows``).
        normalize_rows: divide each distance by the mean of its row, as STML does.
    """

    def __init__(self, margin: float = LossConfig.margin, normalize_rows: bool = True) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be positive, got {margin}")
        self.margin, self.normalize_rows = float(margin), bool(normalize_rows)

    def forward(self, embeddings: Tensor, target: Tensor, ref_emb: Optional[Tensor] = None) -> Tensor:
        """The loss of ``embeddings`` (B, d) against themselves, or against ``ref_emb`` (M, d)."""
        cols, rows = _columns(ref_emb)
        return relaxed_contrastive_loss(embeddings, target, self.margin, columns=cols, rows=rows,
                                        normalize_rows=self.normalize_rows)


class ContrastiveLoss(RelaxedContrastiveLoss):
    """Classic contrastive loss on (pseudo-)label pairs: target 1 pulls a pair, 0 pushes it beyond ``margin``."""

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__(margin, normalize_rows=False)

    def forward(self, embeddings: Tensor, target: Tensor, ref_emb: Optional[Tensor] = None) -> Tensor:
        """The loss of ``embeddings`` (B, d) against themselves, or against ``ref_emb`` (M, d)."""
        cols, rows = _columns(ref_emb)
        return contrastive_loss(embeddings, target, self.margin, columns=cols, rows=rows)


class ProxyLoss(nn.Module):
    """L_proxy: point-to-proxy distances regress onto δ·(1 − s_ik) (docs/method.md §6).

    ``relaxed_contrastive=True`` uses the relaxed contrastive form instead (margin ``delta``), as
    ``loss.kind=relaxed_contrastive`` does.
    """

    def __init__(self, delta: float = LossConfig.delta, relaxed_contrastive: bool = False) -> None:
        super().__init__()
        if delta <= 0:
            raise ValueError(f"delta must be positive, got {delta}")
        self.delta, self.relaxed_contrastive = float(delta), bool(relaxed_contrastive)

    def forward(self, embeddings: Tensor, proxies: Tensor, target: Tensor) -> Tensor:
        """Loss of ``embeddings`` (B, d) against proxy locations (K, d) under ``target`` (B, K)."""
        if self.relaxed_contrastive:
            return proxy_contrastive_loss(embeddings, proxies, target, self.delta)
        return proxy_loss(embeddings, proxies, target, self.delta)


class NeighborhoodLoss(nn.Module):
    """L_neighbourhood: each proxy piece is pulled onto its ``n`` most similar (detached) points.

    Args:
        n: points per proxy.
        lam: λ, weight of the squared distance to the proxy location.
        radius: count only chosen points within this distance of their proxy.
    """

    def __init__(self, n: int = LossConfig.neighbourhood_points, lam: float = LossConfig.neighbourhood_lambda,
                 radius: Optional[float] = LossConfig.neighbourhood_radius) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        self.n, self.lam, self.radius = int(n), float(lam), radius

    def forward(self, points: Tensor, locations: Tensor, bases: Tensor, similarity: Tensor) -> Tensor:
        """``points`` (P, d), proxy ``locations`` (K, d), orthonormal ``bases`` (K, d, m), ``similarity`` (P, K)."""
        return neighborhood_loss(points, locations, bases, similarity, self.n, self.lam, radius=self.radius)
