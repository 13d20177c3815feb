"""Deprecated: the loss functions live in :mod:`plm.losses.functional` (this re-export keeps old imports working)."""

from typing import TYPE_CHECKING

from plm.losses.functional import (
    balanced_pair_weights,
    contrastive_loss,
    neighborhood_loss,
    pairwise_distance,
    point_loss,
    proxy_contrastive_loss,
    proxy_loss,
    relaxed_contrastive_loss,
)
from plm.utils.deprecation import deprecated_names

__all__ = [
    "balanced_pair_weights", "contrastive_loss", "neighborhood_loss", "pairwise_distance", "point_loss",
    "proxy_contrastive_loss", "proxy_loss", "relaxed_contrastive_loss",
]


if not TYPE_CHECKING:  # old spellings, kept for one release; the type checker sees only the new names
    __getattr__ = deprecated_names(__name__, {"neighbourhood_loss": "neighborhood_loss"})
