"""Embedding datasets and scoring retrieval: Recall@K, MAP@R, R-precision, NMI."""

from plm.evaluation.embed import Embeddings, default_cache_dir, embed_dataset, model_fingerprint
from plm.evaluation.knn import knn
from plm.evaluation.metrics import map_and_r_precision, neighbour_hits, nmi, recall_at_k, retrieval_metrics

__all__ = [
    "Embeddings", "default_cache_dir", "embed_dataset", "knn", "map_and_r_precision", "model_fingerprint",
    "neighbour_hits", "nmi", "recall_at_k", "retrieval_metrics",
]
