"""Similarity estimators over a set of embeddings: the PL manifold and its peers, one interface.

``create_estimator(name, **options)`` builds one by name (see :data:`ESTIMATORS`); every estimator
has ``fit(X, neighbors=None)``, ``similarity()``, ``pair_similarity(rows, cols)`` and ``groups_``
(see :mod:`plm.estimators.base`). ``stml_similarity`` and ``kmeans_pseudo_labels`` are the batch
targets the peer training methods reuse; :mod:`plm.estimators.quality` scores an estimator against
labels (purity, correlation).

The registry's names, and the public names below, are available without importing numpy or torch
(``plm similarity-report --help``); each is imported from its module on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from plm.utils.lazy import LazyRegistry, lazy_exports

if TYPE_CHECKING:
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

#: estimator name → class; registration order is the similarity report's row order (peers first, plm last)
ESTIMATORS: LazyRegistry[type[SimilarityEstimator]] = LazyRegistry("estimator")
for _name, _target in (("kmeans", "plm.estimators.clustering:KMeansEstimator"),
                       ("hierarchical", "plm.estimators.clustering:HierarchicalEstimator"),
                       ("random_walk", "plm.estimators.random_walk:RandomWalkEstimator"),
                       ("gaussian", "plm.estimators.stml:GaussianEstimator"),
                       ("stml", "plm.estimators.stml:STMLEstimator"),
                       ("plm", "plm.estimators.pl:PLManifoldEstimator")):
    ESTIMATORS.add_lazy(_name, _target)

#: the estimators ``plm similarity-report`` runs by default: all of them
DEFAULT_ESTIMATORS: tuple[str, ...] = ESTIMATORS.names()


def create_estimator(name: str, **options: object) -> SimilarityEstimator:
    """An estimator by registry name with its options, checked now (ValueError on an unknown name or a
    bad option)."""
    cls: Callable[..., SimilarityEstimator] = ESTIMATORS.get(name)
    try:
        estimator = cls(**options)
    except TypeError as err:
        raise ValueError(f"bad options for estimator {name!r}: {err}") from err
    estimator.check_params()
    return estimator


__all__ = [
    "DEFAULT_ESTIMATORS", "ESTIMATORS", "GaussianEstimator", "HierarchicalEstimator", "KMeansEstimator", "Neighbors",
    "PLManifoldEstimator", "PairLookup", "RandomWalkEstimator", "STMLEstimator", "ScaleError", "SimilarityEstimator",
    "as_features", "compute_neighbors", "contextual_matrix", "create_estimator", "kmeans_pseudo_labels",
    "stml_similarity",
]

lazy_exports(__name__, {
    **dict.fromkeys(("Neighbors", "PairLookup", "ScaleError", "SimilarityEstimator", "as_features",
                     "compute_neighbors"), "plm.estimators.base"),
    **dict.fromkeys(("HierarchicalEstimator", "KMeansEstimator", "kmeans_pseudo_labels"), "plm.estimators.clustering"),
    "PLManifoldEstimator": "plm.estimators.pl",
    "RandomWalkEstimator": "plm.estimators.random_walk",
    **dict.fromkeys(("GaussianEstimator", "STMLEstimator", "contextual_matrix", "stml_similarity"),
                    "plm.estimators.stml"),
})
