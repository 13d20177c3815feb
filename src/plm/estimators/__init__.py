"""Similarity estimators over a set of embeddings: the PL manifold and its peers, one interface.

``create_estimator(name, **options)`` builds one by name (see :data:`ESTIMATORS`); every estimator
has ``fit(X, neighbors=None)``, ``similarity()``, ``pair_similarity(rows, cols)`` and ``groups_``
(see :mod:`plm.estimators.base`). ``stml_similarity`` and ``kmeans_pseudo_labels`` are the batch
targets the peer training methods reuse; :mod:`plm.estimators.quality` scores an estimator against
labels (purity, correlation).
"""

from __future__ import annotations

from collections.abc import Callable

from plm.estimators.base import (
    Neighbors,
    PairLookup,
    ScaleError,
    SimilarityEstimator,
    as_features,
    compute_neighbors,
)
from plm.estimators.clustering import HierarchicalEstimator, KMeansEstimator, kmeans_pseudo_labels
from plm.estimators.pl import PLManifoldEstimator
from plm.estimators.random_walk import RandomWalkEstimator
from plm.estimators.stml import GaussianEstimator, STMLEstimator, contextual_matrix, stml_similarity

ESTIMATORS: dict[str, Callable[..., SimilarityEstimator]] = {
    "plm": PLManifoldEstimator,
    "kmeans": KMeansEstimator,
    "hierarchical": HierarchicalEstimator,
    "random_walk": RandomWalkEstimator,
    "stml": STMLEstimator,
    "gaussian": GaussianEstimator,
}


def create_estimator(name: str, **options: object) -> SimilarityEstimator:
    """An estimator by registry name with its options (ValueError on an unknown name or option)."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    try:
        return ESTIMATORS[name](**options)
    except TypeError as err:
        raise ValueError(f"bad options for estimator {name!r}: {err}") from err


__all__ = [
    "ESTIMATORS", "GaussianEstimator", "HierarchicalEstimator", "KMeansEstimator", "Neighbors", "PLManifoldEstimator",
    "PairLookup", "RandomWalkEstimator", "STMLEstimator", "ScaleError", "SimilarityEstimator", "as_features",
    "compute_neighbors", "contextual_matrix", "create_estimator", "kmeans_pseudo_labels", "stml_similarity",
]
