"""Embedding datasets and scoring retrieval: Recall@K, MAP@R, R-precision, NMI.

The names below are imported from their modules on first use, so that importing
:mod:`plm.evaluation.defaults` (the CLI's ``--help``) needs neither numpy nor torch.
"""

from typing import TYPE_CHECKING

from plm.utils.lazy import lazy_exports

if TYPE_CHECKING:
    from plm.evaluation.embed import Embeddings, default_cache_dir, embed_dataset, model_fingerprint
    from plm.evaluation.metrics import (
        NO_HIT,
        QueryRanks,
        map_and_r_precision,
        neighbor_hits,
        nmi,
        query_ranks,
        recall_at_k,
        reference_ranks,
        retrieval_metrics,
    )
    from plm.neighbors.exact import knn, smallest_k

__all__ = [
    "Embeddings", "NO_HIT", "QueryRanks", "default_cache_dir", "embed_dataset", "knn", "map_and_r_precision",
    "model_fingerprint", "neighbor_hits", "nmi", "query_ranks", "recall_at_k", "reference_ranks", "retrieval_metrics",
    "smallest_k",
]

lazy_exports(__name__, {
    **dict.fromkeys(("Embeddings", "default_cache_dir", "embed_dataset", "model_fingerprint"), "plm.evaluation.embed"),
    **dict.fromkeys(("knn", "smallest_k"), "plm.neighbors.exact"),
    **dict.fromkeys(("NO_HIT", "QueryRanks", "map_and_r_precision", "neighbor_hits", "nmi", "query_ranks",
                     "recall_at_k", "reference_ranks", "retrieval_metrics"), "plm.evaluation.metrics"),
}, deprecated={"neighbour_hits": "neighbor_hits"})
