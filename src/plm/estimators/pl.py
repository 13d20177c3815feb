"""The piecewise-linear manifold as a similarity estimator (wraps :mod:`plm.manifold`)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from plm.estimators.base import Neighbors, PairLookup, SimilarityEstimator, check_int, topk_csr
from plm.estimators.stml import contextual_target
from plm.manifold import ManifoldConfig, fit_pieces, neighbor_similarity, pair_similarity, pairwise_similarity
from plm.manifold.expansion import expanded_similarity
from plm.utils.choices import CONTEXT_MODES
from plm.utils.config import check, check_choice, check_positive


class PLManifoldEstimator(SimilarityEstimator):
    """PL similarity; groups are the selected neighbourhoods S_i.

    Args:
        config: the PL options (its ``max_candidates`` is the neighbour count needed).
        top_k: entries kept per row in sparse mode (the ``top_k`` nearest neighbours, scored).
        dense_max: largest N for the dense (N, N) output.
        expansion: k of the neighbourhood expansion (:func:`plm.manifold.expansion.expanded_similarity`,
            the ``loss.expansion`` of training); 0 or 1 = none. Dense mode only.
        context, context_k, context_mode: STML's contextual similarity in the PL similarity, as training's
            ``loss.context`` applies it to its target (:func:`plm.estimators.stml.contextual_target`,
            after the expansion); ``context`` 0 = none (the default here; training's default is 0.25,
            ``raise``). Dense mode only.
    """

    name = "plm"

    def __init__(self, config: Optional[ManifoldConfig] = None, top_k: int = 16, dense_max: int = 5000,
                 expansion: int = 0, context: float = 0.0, context_k: int = 5, context_mode: str = "raise"):
        super().__init__(dense_max)
        self.config = config
        self.top_k = top_k
        self.expansion = expansion
        self.context = context
        self.context_k = context_k
        self.context_mode = context_mode

    @property
    def manifold_config(self) -> ManifoldConfig:
        """``config``, or the default :class:`ManifoldConfig` when it is ``None``."""
        return self.config if self.config is not None else ManifoldConfig()

    @property
    def needs_neighbors(self) -> int:
        """The candidates the pieces need, and at least ``top_k``."""
        return max(self.manifold_config.max_candidates or 16, int(self.top_k))

    def check_params(self) -> None:
        super().check_params()
        if self.config is not None and not isinstance(self.config, ManifoldConfig):
            raise ValueError(f"config must be a ManifoldConfig, got {type(self.config).__name__}")
        check_int("top_k", self.top_k, 1)
        check_int("expansion", self.expansion, 0)
        check_positive("context", self.context, allow_zero=True)
        check(self.context <= 1, f"context is a weight in [0, 1]; got {self.context}")
        check_int("context_k", self.context_k, 1)
        check_choice("context_mode", self.context_mode, CONTEXT_MODES)

    def _fit(self, x: np.ndarray, neighbors: Optional[Neighbors]) -> None:
        cfg = self.manifold_config
        t = torch.from_numpy(x)
        cand = None
        if neighbors is not None and cfg.group_size is None:  # seed groups bring their own candidates
            kc = cfg.max_candidates if cfg.max_candidates is not None else neighbors.k
            cand = torch.from_numpy(neighbors.indices[:, :kc])
        self.pieces_ = fit_pieces(t, cfg, candidates=cand)
        self.groups_ = [np.asarray(g, dtype=np.int64) for g in self.pieces_.groups()]
        if self.mode_ == "dense":
            s = expanded_similarity(pairwise_similarity(t, self.pieces_, cfg), t, self.expansion)
            self._dense = contextual_target(s, self.context, self.context_k, self.context_mode).numpy()
            return
        if self.expansion > 1 or self.context > 0:
            what = "neighbourhood expansion" if self.expansion > 1 else "contextual similarity"
            raise ValueError(f"the {what} needs the dense mode: {len(x)} points, dense_max {self.dense_max}")
        assert neighbors is not None  # needs_neighbors > 0, so fit() passes the k-NN table
        k = min(self.top_k, neighbors.k)
        cols = torch.from_numpy(neighbors.indices[:, :k])
        values = neighbor_similarity(self.pieces_, cols, cfg)
        self._sparse = topk_csr(values.numpy(), cols.numpy(), len(x))

    def _pairs_sparse(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        # s is defined for every pair: reuse the stored neighbour values (s > 0, so 0 = not stored)
        # and evaluate the others exactly from the pieces
        if self._lookup is None:
            self._lookup = PairLookup(self._sparse)
        out = np.maximum(self._lookup(rows, cols), self._lookup(cols, rows))
        todo = np.flatnonzero(out == 0)
        if len(todo):
            out[todo] = pair_similarity(self.pieces_, torch.from_numpy(rows[todo]), torch.from_numpy(cols[todo]),
                                        self.manifold_config).numpy()
        return out
