"""Retrieval metrics for zero-shot evaluation: Recall@K, MAP@R, R-precision, NMI.

Definitions (each test item queries all *other* test items):

- Recall@K: share of queries with at least one same-class item among their K nearest neighbours.
- R-precision: with R = number of other items of the query's class, the share of same-class
  items among the R nearest. MAP@R (Musgrave et al., 2020): the mean over the R nearest of
  precision@i at each rank i that is a hit, divided by R. Queries with R = 0 (singleton classes)
  are left out of MAP@R and R-precision but counted for Recall@K (never a hit).
- NMI: k-means with as many clusters as classes, normalised mutual information with the labels.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from plm.evaluation.knn import knn


def neighbour_hits(embeddings: np.ndarray, labels: np.ndarray, k: int, block_size: int = 2048,
                   use_faiss: bool = False) -> np.ndarray:
    """(N, k) boolean matrix: is the j-th nearest other item of the same class."""
    _, idx = knn(embeddings, k=k, block_size=block_size, use_faiss=use_faiss)
    return labels[idx] == labels[:, None]


def recall_at_k(hits: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Recall@K for each K from a neighbour-hit matrix."""
    return {str(k): float(hits[:, :k].any(1).mean()) for k in ks}


def map_and_r_precision(hits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(MAP@R, R-precision) from a neighbour-hit matrix with at least max(R) columns."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1
    valid = r > 0
    if not valid.any():
        return float("nan"), float("nan")
    if hits.shape[1] < r.max():
        raise ValueError(f"need {r.max()} neighbours per query for MAP@R, got {hits.shape[1]}")
    cols = np.arange(1, hits.shape[1] + 1)
    within = cols[None, :] <= r[:, None]
    h = hits & within
    precision_at_i = np.cumsum(h, axis=1) / cols[None, :]
    ap = (precision_at_i * h).sum(1)[valid] / r[valid]
    rp = h.sum(1)[valid] / r[valid]
    return float(ap.mean()), float(rp.mean())


def nmi(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """NMI between k-means clusters (as many as classes) and the labels."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    n_clusters = int(np.unique(labels).size)
    pred = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit_predict(embeddings)
    return float(normalized_mutual_info_score(labels, pred))


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8),
                      with_nmi: bool = True, block_size: int = 2048, use_faiss: bool = False) -> dict:
    """All retrieval metrics of a labelled embedding set.

    Returns:
        ``{"num_queries", "recall_at": {"1": …}, "map_at_r", "r_precision", "nmi"}``
        (``nmi`` is ``None`` when ``with_nmi`` is False).
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"expected (N, D) embeddings and N labels, got {embeddings.shape} and {labels.shape}")
    if (labels < 0).any():
        raise ValueError("retrieval metrics need every item labelled (found label -1)")
    _, counts = np.unique(labels, return_counts=True)
    k = min(len(labels) - 1, max(max(ks), int(counts.max()) - 1))
    hits = neighbour_hits(embeddings, labels, k, block_size=block_size, use_faiss=use_faiss)
    map_r, r_prec = map_and_r_precision(hits, labels)
    return {
        "num_queries": int(len(labels)),
        "recall_at": recall_at_k(hits, ks),
        "map_at_r": map_r,
        "r_precision": r_prec,
        "nmi": nmi(embeddings, labels) if with_nmi else None,
    }
