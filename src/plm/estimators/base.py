"""The common interface of similarity estimators, and the shared k-NN table.

Every estimator follows scikit-learn's estimator rules: ``__init__`` only stores its options
(``get_params``/``set_params`` and ``sklearn.base.clone`` work), ``fit(X)`` validates them (bad
ones raise ValueError there) and learns; learned state ends in ``_``. After ``fit``:

- ``similarity()``: the (N, N) similarity as a dense ``numpy`` array in *dense* mode
  (N ≤ ``dense_max``), or a ``scipy.sparse.csr_matrix`` holding each point's top-k in *sparse* mode;
- ``pair_similarity(rows, cols)``: the similarity of arbitrary pairs (exact wherever the method
  defines a value for every pair; zero outside the stored top-k for sparse-only methods);
- ``groups_``: a list of index arrays (clusters, or each point's neighbourhood), or ``None``.

Inputs are L2-normalised first (``as_features``). A ``Neighbors`` table (the Euclidean k-NN of the
normalised inputs) can be computed once and passed to every estimator's ``fit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator

Similarity = Union[np.ndarray, sp.csr_matrix]


class ScaleError(ValueError):
    """The estimator cannot run at this many points within bounded memory (it needs dense N × N)."""


def as_features(x: object) -> np.ndarray:
    """Validated, L2-normalised float32 (N, d) features.

    Raises:
        ValueError: not 2-D, empty, or with NaN / inf values.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D (N, d) array, got shape {x.shape}; reshape your data")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"need at least 2 points with at least 1 feature, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf values; clean the input first")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass
class Neighbors:
    """Each point's K nearest other points (squared Euclidean distances ascending)."""

    distances: np.ndarray  # (N, K) float32
    indices: np.ndarray  # (N, K) int64

    @property
    def k(self) -> int:
        """Neighbours per point."""
        return int(self.indices.shape[1])

    def take(self, k: int, n: int) -> Neighbors:
        """The first ``k`` columns; raises ValueError when fewer are stored or N differs."""
        if self.indices.shape[0] != n:
            raise ValueError(f"neighbour table has {self.indices.shape[0]} rows for {n} points")
        if self.k < k:
            raise ValueError(f"need {k} neighbours per point, the table holds {self.k}")
        return Neighbors(self.distances[:, :k], self.indices[:, :k])


def compute_neighbors(x: np.ndarray, k: int, approximate: bool = False, block_size: int = 2048) -> Neighbors:
    """The k-NN table of (already normalised) features, blockwise with bounded memory.

    Args:
        x: (N, d) features.
        k: neighbours per point (clipped to N - 1).
        approximate: faiss IVF instead of exact search (see :func:`plm.manifold.knn_candidates`).
        block_size: queries per exact block.
    """
    from plm.neighbors.candidates import knn_candidates

    k = min(k, len(x) - 1)
    d, i = knn_candidates(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), k, approximate=approximate,
                          block_size=block_size)
    return Neighbors(d.numpy().astype(np.float32), i.numpy().astype(np.int64))


class PairLookup:
    """Values of a sparse matrix at arbitrary (row, col) pairs (zero where not stored)."""

    def __init__(self, matrix: sp.spmatrix):
        coo = sp.coo_matrix(matrix)
        self.n = coo.shape[1]
        codes = coo.row.astype(np.int64) * self.n + coo.col.astype(np.int64)
        order = np.argsort(codes, kind="stable")
        self.codes = codes[order]
        self.values = coo.data[order]

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Stored values at the pairs, 0 elsewhere."""
        q = np.asarray(rows, dtype=np.int64) * self.n + np.asarray(cols, dtype=np.int64)
        pos = np.searchsorted(self.codes, q)
        pos_c = np.minimum(pos, max(len(self.codes) - 1, 0))
        hit = (pos < len(self.codes)) & (self.codes[pos_c] == q) if len(self.codes) else np.zeros(q.shape, bool)
        return np.where(hit, self.values[pos_c] if len(self.codes) else 0.0, 0.0).astype(np.float32)


def topk_csr(rows_values: np.ndarray, rows_indices: np.ndarray, n: int) -> sp.csr_matrix:
    """A CSR matrix from per-row (N, k) values and column indices (entries with index < 0 dropped)."""
    nrows, k = rows_indices.shape
    keep = rows_indices >= 0
    r = np.repeat(np.arange(nrows), k)[keep.ravel()]
    values = rows_values.ravel()[keep.ravel()].astype(np.float32)
    return sp.csr_matrix((values, (r, rows_indices.ravel()[keep.ravel()])), shape=(nrows, n))


def keep_topk(matrix: sp.spmatrix, k: int, keep_diagonal: bool = False, block_rows: int = 8192) -> sp.csr_matrix:
    """Each row's ``k`` largest stored off-diagonal entries (plus the diagonal entry when asked).

    Works row block by row block on a padded copy (memory ≈ block_rows × longest row).
    """
    m = sp.csr_matrix(matrix)
    m.sum_duplicates()
    n = m.shape[0]
    counts = np.diff(m.indptr)
    rows_all = np.repeat(np.arange(n), counts)
    is_diag = m.indices == rows_all
    if counts.max(initial=0) <= k and not is_diag.any():
        return m
    keep = np.zeros(len(m.data), bool)
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        lo, hi = m.indptr[start], m.indptr[stop]
        cnt = counts[start:stop]
        width = int(cnt.max(initial=0))
        if width == 0:
            continue
        rows = rows_all[lo:hi] - start
        pos = np.arange(hi - lo) - np.repeat(m.indptr[start:stop] - lo, cnt)
        padded = np.full((stop - start, width), -np.inf)
        padded[rows, pos] = np.where(is_diag[lo:hi], -np.inf, m.data[lo:hi])
        if width > k:
            top = np.argpartition(-padded, k - 1, axis=1)[:, :k]
            chosen = np.zeros(padded.shape, dtype=bool)
            np.put_along_axis(chosen, top, True, axis=1)
        else:
            chosen = np.ones(padded.shape, dtype=bool)
        keep[lo:hi] = chosen[rows, pos] & ~is_diag[lo:hi]
    if keep_diagonal:
        keep |= is_diag
    return sp.csr_matrix((m.data[keep], (rows_all[keep], m.indices[keep])), shape=m.shape)


def check_int(name: str, value: object, low: int) -> None:
    """Raise ValueError unless ``value`` is an integer (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


class SimilarityEstimator(BaseEstimator):
    """Base class: parameter checks at fit time, dense/sparse mode, and default dense lookups."""

    name: str = "estimator"
    #: whether the estimator has a bounded-memory sparse mode
    scalable: bool = True
    # fitted state (class-level defaults, so that __init__ stores nothing but the parameters)
    groups_: Optional[list[np.ndarray]] = None
    mode_: Optional[str] = None
    n_: int = 0
    _dense: Optional[np.ndarray] = None
    _sparse: Optional[sp.csr_matrix] = None
    _lookup: Optional[PairLookup] = None

    def __init__(self, dense_max: int = 5000):
        self.dense_max = dense_max

    @property
    def needs_neighbors(self) -> int:
        """Neighbours it needs in the shared k-NN table (0 = none)."""
        return 0

    def check_params(self) -> None:
        """Raise ValueError naming the first bad parameter (called by :meth:`fit`)."""
        if isinstance(self.dense_max, bool) or not isinstance(self.dense_max, int) or self.dense_max < 2:
            raise ValueError(f"dense_max must be an integer >= 2, got {self.dense_max!r}")

    def fit(self, x: object, neighbors: Optional[Neighbors] = None) -> SimilarityEstimator:
        """Learn the similarity of the (N, d) points ``x``.

        Args:
            x: (N, d) array or tensor (L2-normalised here).
            neighbors: optional shared k-NN table of the normalised points.

        Raises:
            ValueError: a bad parameter, or bad input.
            ScaleError: dense-only estimator and N > ``dense_max``.
        """
        self.check_params()
        feats = as_features(x)
        self.n_ = len(feats)
        self.mode_ = "dense" if self.n_ <= self.dense_max else "sparse"
        if self.mode_ == "sparse" and not self.scalable:
            raise ScaleError(f"{self.name} needs dense N × N memory and N = {self.n_} > dense_max = "
                             f"{self.dense_max}; it is skipped at this scale")
        if self.needs_neighbors:
            k = min(self.needs_neighbors, self.n_ - 1)
            neighbors = compute_neighbors(feats, k) if neighbors is None else neighbors.take(k, self.n_)
        self.groups_ = None
        self._dense, self._sparse, self._lookup = None, None, None
        self._fit(feats, neighbors)
        return self

    def _fit(self, x: np.ndarray, neighbors: Optional[Neighbors]) -> None:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if self.mode_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit(X) first")

    def similarity(self) -> Similarity:
        """Dense (N, N) array in dense mode, CSR top-k matrix in sparse mode."""
        self._check_fitted()
        return self._dense if self._dense is not None else self._sparse

    def pair_similarity(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Similarity of the pairs (rows[q], cols[q]) as float32."""
        self._check_fitted()
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        if self._dense is not None:
            return self._dense[rows, cols].astype(np.float32)
        return self._pairs_sparse(rows, cols)

    def _pairs_sparse(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self._lookup is None:
            self._lookup = PairLookup(self._sparse)
        return self._lookup(rows, cols)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and not k.endswith("_"))
        return f"{type(self).__name__}({opts})"
