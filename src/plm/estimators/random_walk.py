"""Random-walk (diffusion) similarity on a Euclidean k-NN graph, as in mining on manifolds (MOM).

Graph: each point's k nearest neighbours, edge weight w_ij = max(0, x_i·x_j)^γ on the normalised
features (γ = 3), symmetrised as max(w_ij, w_ji); S = D^(−1/2) W D^(−1/2).

- Dense mode (N ≤ ``dense_max``): the diffusion F = (I − αS)^(−1) (α = 0.99), exact.
- Sparse mode: the truncated series F = Σ_{t=0}^{T} α^t S^t (T = ``steps``), each power pruned to
  its ``prune`` largest entries per row so memory stays O(N · prune).

Both are reported as the cosine-normalised affinity F_ij / sqrt(F_ii F_jj) ∈ [0, 1] (diagonal 1).
The estimator has no groups.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.sparse as sp

from plm.estimators.base import Neighbors, SimilarityEstimator, check_int, keep_topk


class RandomWalkEstimator(SimilarityEstimator):
    """Diffusion affinity on the k-NN graph.

    Args:
        k: graph neighbours per point.
        alpha: restart weight α in (0, 1).
        gamma: exponent γ of the edge weights.
        steps: walk length T of the sparse-mode truncated series.
        prune: entries kept per row after each sparse power.
        top_k: entries per row kept in the sparse output (at least ``prune``).
        dense_max: largest N for the dense (exact) mode.
    """

    name = "random_walk"

    def __init__(self, k: int = 10, alpha: float = 0.99, gamma: float = 3.0, steps: int = 3, prune: int = 64,
                 top_k: int = 16, dense_max: int = 5000):
        super().__init__(dense_max)
        self.k, self.alpha, self.gamma, self.steps, self.prune, self.top_k = k, alpha, gamma, steps, prune, top_k

    @property
    def needs_neighbors(self) -> int:
        """The graph's ``k`` neighbours per point."""
        return int(self.k)

    def check_params(self) -> None:
        super().check_params()
        for name in ("k", "steps", "prune", "top_k"):
            check_int(name, getattr(self, name), 1)
        if not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if not isinstance(self.gamma, (int, float)) or not self.gamma > 0:
            raise ValueError(f"gamma must be positive, got {self.gamma!r}")

    def transition(self, x: np.ndarray, neighbors: Neighbors) -> sp.csr_matrix:
        """The symmetric normalised affinity S = D^(−1/2) W D^(−1/2) of the k-NN graph."""
        n = len(x)
        idx = neighbors.indices[:, :self.k]
        rows = np.repeat(np.arange(n), idx.shape[1])
        cos = np.einsum("ij,ij->i", x[rows], x[idx.ravel()])
        w = sp.csr_matrix((np.maximum(cos, 0.0) ** self.gamma, (rows, idx.ravel())), shape=(n, n))
        w = w.maximum(w.T).tocsr()
        deg = np.asarray(w.sum(1)).ravel()
        inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-30)), 0.0)
        return (sp.diags(inv) @ w @ sp.diags(inv)).tocsr()

    def _fit(self, x: np.ndarray, neighbors: Optional[Neighbors]) -> None:
        n = len(x)
        assert neighbors is not None  # needs_neighbors > 0, so fit() passes the k-NN table
        s = self.transition(x, neighbors)
        if self.mode_ == "dense":
            f = np.linalg.inv(np.eye(n) - self.alpha * s.toarray())
            diag = np.sqrt(np.maximum(np.diag(f), 1e-30))
            dense = np.clip(f / diag[:, None] / diag[None, :], 0.0, 1.0).astype(np.float32)
            np.fill_diagonal(dense, 1.0)
            self._dense = dense
            return
        total = sp.identity(n, format="csr", dtype=np.float64)
        power = sp.identity(n, format="csr", dtype=np.float64)
        for t in range(1, self.steps + 1):
            # row blocks bound the memory of the unpruned product (≈ block × prune × k entries)
            power = sp.vstack([keep_topk(power[r:r + 8192] @ s, self.prune, keep_diagonal=True)
                               for r in range(0, n, 8192)]).tocsr()
            total = total + (self.alpha ** t) * power
        total = total.tocsr()
        diag = np.sqrt(np.maximum(total.diagonal(), 1e-30))
        norm = sp.diags(1.0 / diag) @ total @ sp.diags(1.0 / diag)
        norm = norm.tocsr()
        norm.data = np.clip(norm.data, 0.0, 1.0)
        norm.setdiag(1.0)
        top = keep_topk(norm, max(self.top_k, self.prune) + 1, keep_diagonal=True)
        self._sparse = top.maximum(top.T).tocsr().astype(np.float32)  # symmetric support
