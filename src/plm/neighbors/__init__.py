"""Nearest neighbours, the ground floor every layer searches with.

- :mod:`plm.neighbors.exact`: the project's one exact k-NN (:func:`knn` on arrays, :func:`knn_tensors`
  where the tensors live), its order rule (distance, then index, also across the k-th place) and
  its helpers (:func:`smallest_k`, :func:`condition`, :func:`drop_self`).
- :mod:`plm.neighbors.candidates`: each point's nearest other points with bounded memory
  (:func:`knn_candidates`; exact, or faiss's inverted-file index when asked).
"""

from plm.neighbors.candidates import knn_candidates
from plm.neighbors.exact import condition, drop_self, knn, knn_tensors, smallest_k

__all__ = ["condition", "drop_self", "knn", "knn_candidates", "knn_tensors", "smallest_k"]
