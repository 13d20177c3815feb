"""Deprecated: the loss functions live in :mod:`plm.losses.functional` (this re-export keeps old imports working)."""

from plm.losses.functional import (
    balanced_pair_weights,
    contrastive_loss,
    neighbourhood_loss,
    pairwise_distance,
    point_loss,
    proxy_contrastive_loss,
    proxy_loss,
    relaxed_contrastive_loss,
)

__all__ = [
    "balanced_pair_weights", "contrastive_loss", "neighbourhood_loss", "pairwise_distance", "point_loss",
    "proxy_contrastive_loss", "proxy_loss", "relaxed_contrastive_loss",
]
