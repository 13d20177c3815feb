"""Search your own images: embeddings files, vector indexes and their on-disk formats.

* :mod:`plm.search.store` — the ``plm embed`` output (:class:`EmbeddingStore`, ``.npz``).
* :mod:`plm.search.embedder` — :func:`embed_folder`, incremental (only new or changed files).
* :mod:`plm.search.index` — :class:`VectorIndex` (exact / HNSW / IVF) and recall checks.
* :mod:`plm.search.indexfile` — the ``plm index`` output (:class:`SearchIndex`, ``.npz``).
* :mod:`plm.search.identity` — the model record that lets ``plm search`` embed queries the same way.

See ``docs/search.md`` for the file formats.
"""

from typing import TYPE_CHECKING

from plm.search.embedder import EmbedStats, embed_folder
from plm.search.identity import describe, model_from_identity, model_identity
from plm.search.index import (
    KINDS,
    METRICS,
    OLD_NAMES,
    VectorIndex,
    ann_recall,
    choose_metric,
    exact_neighbors,
    tune_search,
)
from plm.search.indexfile import SearchIndex
from plm.search.store import EmbeddingStore
from plm.utils.deprecation import deprecated_names

__all__ = [
    "KINDS", "METRICS", "EmbedStats", "EmbeddingStore", "SearchIndex", "VectorIndex", "choose_metric",
    "describe", "embed_folder", "exact_neighbors", "model_from_identity", "model_identity", "ann_recall",
    "tune_search",
]


if not TYPE_CHECKING:  # old spellings, kept for one release; the type checker sees only the new names
    __getattr__ = deprecated_names(__name__, OLD_NAMES)
