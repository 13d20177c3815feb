"""Embedding datasets and scoring retrieval: Recall@K, MAP@R, R-precision, NMI."""

from plm.evaluation.embed import Embeddings, default_cache_dir, embed_dataset, model_fingerprint
from plm.evaluation.knn import knn, smallest_k
from plm.evaluation.metrics import (
    NO_HIT,
    QueryRanks,
    map_and_r_precision,
    neighbour_hits,
    nmi,
    query_ranks,
    recall_at_k,
    reference_ranks,
    retrieval_metrics,
)

__all__ = [
    "Embeddings", "NO_HIT", "QueryRanks", "default_cache_dir", "embed_dataset", "knn", "map_and_r_precision",
    "model_fingerprint", "neighbour_hits", "nmi", "query_ranks", "recall_at_k", "reference_ranks", "retrieval_metrics", "smallest_k",
]
