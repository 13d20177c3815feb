"""The piecewise-linear (PL) manifold model and its similarity (docs/method.md §3-§5).

``similarity_matrix(x, config)`` is the per-training-step entry point; ``fit_pieces`` +
``pairwise_similarity`` split it in two; ``directed_similarity`` scores points against any
pieces (proxies included); ``sparse_similarity`` is the dataset-scale version.
"""

from plm.manifold.config import CRITERIA, NORMALIZATIONS, ON_BREACH, SYMMETRIZE, ManifoldConfig
from plm.manifold.pieces import Pieces, fit_pieces, nearest_candidates
from plm.manifold.selection import candidate_residual, fit_error
from plm.manifold.similarity import (
    directed_similarity,
    neighbor_similarity,
    normalize_similarity,
    pair_similarity,
    paired_directed_similarity,
    pairwise_similarity,
    similarity_matrix,
    sparse_similarity,
)
from plm.neighbors.candidates import knn_candidates

__all__ = [
    "CRITERIA", "NORMALIZATIONS", "ON_BREACH", "SYMMETRIZE", "ManifoldConfig", "Pieces", "candidate_residual",
    "directed_similarity", "fit_error", "fit_pieces", "normalize_similarity",
    "knn_candidates", "nearest_candidates", "neighbor_similarity", "pair_similarity", "paired_directed_similarity",
    "pairwise_similarity", "similarity_matrix", "sparse_similarity",
]
