"""STML's contextual similarity (Kim et al., CVPR 2022) and the plain Gaussian kernel.

For L2-normalised teacher embeddings t (docs/method.md §8, following the authors' released code):

- W_P = exp(−‖t_i − t_j‖² / σ), σ = 3;
- N_k(i): the k largest entries of row i of W_P (i itself included, k = 5); the k-reciprocal set
  R(i) = {j : j ∈ N_k(i) and i ∈ N_k(j)};
- W̃_C(i, j) = |R(i) ∩ R(j)| / |R(i)| for j ∈ R(i), else 0;
- query expansion: Ŵ_C(i) = the mean of the rows W̃_C(q) over the round(k/2) first members q of N_k(i);
- W_C = (Ŵ_C + Ŵ_Cᵀ) / 2 and the target W = (W_P + W_C) / 2.

``stml_similarity`` computes it on a batch tensor (the training target); ``STMLEstimator`` computes
the same with sparse matrices, so it scales to datasets (there W_P is evaluated on demand).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from plm.estimators.base import Neighbors, PairLookup, SimilarityEstimator, check_int, keep_topk, topk_csr


def _half(k: int) -> int:
    return int(np.around(k / 2))  # as the authors' code (round half to even)


@torch.no_grad()
def stml_similarity(t: Tensor, sigma: float = 3.0, k: int = 5) -> Tensor:
    """STML's target W = (W_P + W_C) / 2 for a batch of teacher embeddings.

    Args:
        t: (B, d) teacher embeddings (L2-normalised here).
        sigma: Gaussian bandwidth σ of W_P.
        k: neighbourhood size (the point itself included).

    Returns:
        (B, B) symmetric similarities in [0, 1]. As in the authors' code the diagonal is not
        forced to 1 (the loss masks it out).
    """
    _check(sigma, k)
    if t.ndim != 2:
        raise ValueError(f"expected (B, d) embeddings, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("embeddings contain NaN or inf values")
    return stml_target(t, sigma, k)


@torch.no_grad()
def stml_target(t: Tensor, sigma: float, k: int) -> Tensor:
    """:func:`stml_similarity` without the input checks (the training step: no device sync)."""
    t = torch.nn.functional.normalize(t.detach().float(), dim=1)
    sq = (t * t).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * t @ t.T).clamp(min=0)
    d2.fill_diagonal_(0.0)
    w_p = torch.exp(-d2 / sigma)
    return (w_p + contextual_similarity(w_p, k)) / 2


@torch.no_grad()
def contextual_similarity(ranking: Tensor, k: int) -> Tensor:
    """STML's contextual similarity W_C of a batch, its neighbours ranked by any similarity.

    Each point's k nearest (itself first, then the largest entries of its row of ``ranking``) give
    the k-reciprocal sets R(i); W̃_C(i, j) = |R(i) ∩ R(j)| / |R(i)| for j ∈ R(i); W_C is W̃_C averaged
    over the round(k/2) nearest (query expansion) and symmetrised. STML ranks by its Gaussian kernel;
    ``loss.context`` of the PLM loss ranks by the PL similarity.

    Args:
        ranking: (N, N) similarities (larger = nearer); the diagonal is ignored.
        k: neighbourhood size, the point included.
    """
    n = ranking.shape[0]
    kk = min(int(k), n)
    ranked = ranking.detach().clone()
    ranked.fill_diagonal_(float("inf"))  # the point itself ranks first, as exp(0) = 1 does in the authors' code
    topk = torch.topk(ranked, kk, dim=1).indices
    w_nn = torch.zeros_like(ranked).scatter_(1, topk, 1.0)
    v = w_nn * w_nn.T  # k-reciprocal
    w_c_tilde = (v @ v) * v / v.sum(1, keepdim=True)
    w_c_hat = w_c_tilde[topk[:, :max(1, _half(kk))]].mean(1)
    return (w_c_hat + w_c_hat.T) / 2


def contextual_target(s: Tensor, c: float, k: int, mode: str = "raise") -> Tensor:
    """The PL similarity ``s`` with STML's contextual similarity W_C(s) (:func:`contextual_similarity`,
    neighbours ranked by ``s``) at weight ``c``: ``raise`` s + c max(W_C − s, 0) (a pair only rises),
    ``mix`` (1 − c) s + c W_C; ``c`` = 0 gives ``s``. Training's ``loss.context`` and the PL estimator's."""
    if c <= 0:
        return s
    w_c = contextual_similarity(s, k).to(s.dtype)
    return s + c * (w_c - s).clamp(min=0) if mode == "raise" else (1 - c) * s + c * w_c


def _check(sigma: float, k: int) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0 or not np.isfinite(sigma):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")


def _with_self(neighbors: np.ndarray, n: int, k: int) -> np.ndarray:
    """N_k(i): each point itself first, then its k−1 nearest other points."""
    return np.concatenate([np.arange(n)[:, None], neighbors[:, :k - 1]], axis=1)


def reciprocal_sets(neighbors: np.ndarray, n: int, k: int) -> sp.csr_matrix:
    """The k-reciprocal sets R(i) as a 0/1 (N, N) CSR matrix with sorted indices."""
    nk = _with_self(neighbors, n, k)
    w_nn = sp.csr_matrix((np.ones(nk.size, np.float32), (np.repeat(np.arange(n), nk.shape[1]), nk.ravel())),
                         shape=(n, n))
    v = w_nn.multiply(w_nn.T).tocsr()
    v.data[:] = 1.0
    v.sort_indices()
    return v


def contextual_matrix(neighbors: np.ndarray, n: int, k: int,
                      reciprocal: Optional[sp.csr_matrix] = None) -> sp.csr_matrix:
    """STML's W_C as a sparse (N, N) matrix from each point's k−1 nearest other points.

    ``reciprocal``: the :func:`reciprocal_sets` of the same inputs, when already computed.
    """
    rows = np.arange(n)
    nk = _with_self(neighbors, n, k)
    v = reciprocal_sets(neighbors, n, k) if reciprocal is None else reciprocal
    size = np.asarray(v.sum(1)).ravel()
    w_c_tilde = sp.csr_matrix((v @ v).multiply(v))
    w_c_tilde = sp.diags(1.0 / size) @ w_c_tilde
    half = max(1, _half(k))
    q = nk[:, :half]
    expand = sp.csr_matrix((np.full(q.size, 1.0 / half, np.float32), (np.repeat(rows, half), q.ravel())), shape=(n, n))
    w_c_hat = (expand @ w_c_tilde).tocsr()
    return ((w_c_hat + w_c_hat.T) * 0.5).tocsr()


class STMLEstimator(SimilarityEstimator):
    """STML contextual similarity; groups are the k-reciprocal sets R(i).

    Args:
        sigma: bandwidth σ of W_P.
        k: neighbourhood size (the point included).
        top_k: entries per row kept in sparse mode.
        dense_max: largest N for the dense output.
    """

    name = "stml"

    def __init__(self, sigma: float = 3.0, k: int = 5, top_k: int = 16, dense_max: int = 5000):
        super().__init__(dense_max)
        self.sigma, self.k, self.top_k = sigma, k, top_k

    @property
    def needs_neighbors(self) -> int:
        """The k − 1 nearest other points, and at least ``top_k``."""
        return max(int(self.k) - 1, int(self.top_k), 1)

    def check_params(self) -> None:
        super().check_params()
        _check(self.sigma, self.k)
        check_int("top_k", self.top_k, 1)

    def _fit(self, x: np.ndarray, neighbors: Optional[Neighbors]) -> None:
        n = len(x)
        k = min(self.k, n)
        self._x = x
        assert neighbors is not None  # needs_neighbors > 0, so fit() passes the k-NN table
        rec = reciprocal_sets(neighbors.indices, n, k)
        w_c = contextual_matrix(neighbors.indices, n, k, reciprocal=rec)
        self._w_c = w_c
        self._wc_lookup = PairLookup(w_c)
        self.groups_ = [rec.indices[rec.indptr[i]:rec.indptr[i + 1]].astype(np.int64) for i in range(n)]
        if self.mode_ == "dense":
            self._dense = ((_gaussian_dense(x, float(self.sigma)) + w_c.toarray()) / 2).astype(np.float32)
            return
        kk = min(self.top_k, neighbors.k)
        idx = neighbors.indices[:, :kk]
        rows = np.repeat(np.arange(n), kk)
        values = self.pair_values(rows, idx.ravel()).reshape(n, kk)
        candidates = topk_csr(values, idx, n)
        # pairs with a contextual weight but outside the k-NN lists keep their value too
        extra = w_c.copy().tocoo()
        extra_vals = self.pair_values(extra.row, extra.col)
        full = candidates.maximum(sp.csr_matrix((extra_vals, (extra.row, extra.col)), shape=(n, n)))
        self._sparse = keep_topk(full, self.top_k)

    def pair_values(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """W at arbitrary pairs: W_P from the features, W_C from the sparse matrix."""
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        return (_gaussian_pairs(self._x, rows, cols, float(self.sigma)) + self._wc_lookup(rows, cols)) / 2

    def _pairs_sparse(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.pair_values(rows, cols)


class GaussianEstimator(SimilarityEstimator):
    """Plain Gaussian kernel exp(−‖x_i − x_j‖² / σ) on the normalised features.

    Args:
        sigma: bandwidth σ; ``None`` = the median squared distance of each point to its
            ``k``-th nearest neighbour (a data-driven local scale).
        k: the neighbour rank of the automatic σ, and the entries per row in sparse mode.
        dense_max: largest N for the dense output.
    """

    name = "gaussian"

    def __init__(self, sigma: Optional[float] = None, k: int = 16, dense_max: int = 5000):
        super().__init__(dense_max)
        self.sigma, self.k = sigma, k

    @property
    def needs_neighbors(self) -> int:
        """``k``: the rank of the automatic σ and the entries per row in sparse mode."""
        return int(self.k)

    def check_params(self) -> None:
        super().check_params()
        if self.sigma is not None:
            _check(self.sigma, 1)
        check_int("k", self.k, 1)

    def _fit(self, x: np.ndarray, neighbors: Optional[Neighbors]) -> None:
        n = len(x)
        self._x = x
        assert neighbors is not None  # needs_neighbors > 0, so fit() passes the k-NN table
        kth = neighbors.distances[:, -1]
        sigma = float(np.median(kth)) if self.sigma is None else float(self.sigma)
        self.sigma_ = sigma if sigma > 0 else 1.0
        if self.mode_ == "dense":
            self._dense = _gaussian_dense(x, self.sigma_).astype(np.float32)
            return
        self._sparse = topk_csr(np.exp(-neighbors.distances / self.sigma_), neighbors.indices, n)

    def _pairs_sparse(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return _gaussian_pairs(self._x, rows, cols, self.sigma_)


def _gaussian_dense(x: np.ndarray, sigma: float) -> np.ndarray:
    """exp(−‖x_i − x_j‖² / σ) for all pairs of unit rows (diagonal exactly 1)."""
    d2 = np.maximum(2.0 - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(d2, 0.0)
    return np.exp(-d2 / sigma)


def _gaussian_pairs(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, sigma: float,
                    chunk: int = 262144) -> np.ndarray:
    """exp(−‖x_r − x_c‖² / σ) for the listed pairs of unit rows, in chunks (float32)."""
    out = np.empty(len(rows), np.float32)
    for start in range(0, len(rows), chunk):
        r, c = rows[start:start + chunk], cols[start:start + chunk]
        d2 = np.maximum(2.0 - 2.0 * np.einsum("ij,ij->i", x[r], x[c]), 0.0)
        d2[r == c] = 0.0
        out[start:start + len(r)] = np.exp(-d2 / sigma)
    return out
