"""Clustering peers: k-means pseudo-labels (DeepCluster / UDML-SS) and agglomerative clustering (UHML).

k-means: s_ij = 1 when i and j share a cluster, else 0; groups are the clusters. At scale (N × K × d
large) the clustering runs with faiss when it is installed, else with scikit-learn.

Hierarchical: an agglomerative tree over all points (scipy); s_ij is graded by the height at which
i and j first share a cluster, s_ij = 1 − h_ij / max h (``grade="height"``), or by the merge's
rank among the N − 1 merges (``grade="rank"``); groups are the tree cut into ``n_clusters``. It needs
O(N²) memory, so past ``dense_max`` points it refuses with :class:`ScaleError`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from plm.estimators.base import Neighbors, SimilarityEstimator, check_int, compute_neighbors, topk_csr

LINKAGES = ("ward", "average", "complete", "single")
GRADES = ("height", "rank")


def kmeans_pseudo_labels(x: np.ndarray, n_clusters: int, seed: int = 0, n_init: int = 1, max_iter: int = 50,
                         use_faiss: Optional[bool] = None, reduce_dim: int = 64) -> np.ndarray:
    """k-means cluster ids of the rows of ``x`` (the per-epoch pseudo-labels of k-means peers).

    Small problems run scikit-learn's Lloyd k-means. Large ones (N·K·d > 2·10⁹, e.g. SOP's 60,000
    images in 11,318 clusters) run faiss k-means, at most 10 iterations, on the top ``reduce_dim``
    principal components of ``x``, so that one iteration stays under a second on two cores.

    Args:
        x: (N, d) features (used as given; normalise them first for cosine geometry).
        n_clusters: K (clipped to N).
        seed: random seed.
        n_init: restarts (the best inertia wins).
        max_iter: Lloyd iterations per restart.
        use_faiss: force (True) or forbid (False) the large-problem path; ``None`` = by size, when
            faiss is installed.
        reduce_dim: principal components kept on the large-problem path.

    Returns:
        (N,) int64 cluster ids in [0, K).
    """
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"expected a non-empty (N, d) array, got shape {x.shape}")
    check_int("n_clusters", n_clusters, 1)
    check_int("n_init", n_init, 1)
    check_int("max_iter", max_iter, 1)
    k = min(n_clusters, len(x))
    if use_faiss is None:
        use_faiss = len(x) * k * x.shape[1] > 2e9
    if use_faiss:
        try:
            import faiss

            data = x
            if x.shape[1] > reduce_dim:
                sample = x[np.random.default_rng(seed).choice(len(x), size=min(len(x), 20_000), replace=False)]
                mean = sample.mean(0)
                _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
                data = np.ascontiguousarray((x - mean) @ vt[:reduce_dim].T, dtype=np.float32)
            km = faiss.Kmeans(data.shape[1], k, niter=min(max_iter, 10), nredo=n_init, seed=seed, verbose=False,
                              max_points_per_centroid=max(256, -(-len(x) // k)))
            km.train(data)
            return km.index.search(data, 1)[1][:, 0].astype(np.int64)
        except ImportError:
            pass
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed).fit_predict(x).astype(np.int64)


def _groups(labels: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, cuts)


class KMeansEstimator(SimilarityEstimator):
    """k-means pseudo-labels: same cluster = 1, else 0.

    Args:
        n_clusters: K.
        seed: random seed.
        n_init: k-means restarts.
        top_k: entries per row kept in sparse mode (the nearest neighbours' 0/1 values).
        dense_max: largest N for the dense output.
    """

    name = "kmeans"

    def __init__(self, n_clusters: int = 100, seed: int = 0, n_init: int = 1, top_k: int = 16, dense_max: int = 5000):
        super().__init__(dense_max)
        self.n_clusters, self.seed, self.n_init, self.top_k = n_clusters, seed, n_init, top_k

    def check_params(self) -> None:
        super().check_params()
        check_int("n_clusters", self.n_clusters, 1)
        check_int("n_init", self.n_init, 1)
        check_int("top_k", self.top_k, 1)

    def _fit(self, x: np.ndarray, neighbors: Optional[Neighbors]) -> None:
        self.labels_ = kmeans_pseudo_labels(x, self.n_clusters, seed=self.seed, n_init=self.n_init)
        self.groups_ = _groups(self.labels_)
        if self.mode_ == "dense":
            self._dense = (self.labels_[:, None] == self.labels_[None, :]).astype(np.float32)
        else:
            if neighbors is None or neighbors.k < self.top_k:
                neighbors = compute_neighbors(x, self.top_k)
            idx = neighbors.indices[:, :self.top_k]
            values = (self.labels_[idx] == self.labels_[:, None]).astype(np.float32)
            self._sparse = topk_csr(values, idx, len(x))

    def _pairs_sparse(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return (self.labels_[rows] == self.labels_[cols]).astype(np.float32)


class HierarchicalEstimator(SimilarityEstimator):
    """Agglomerative clustering, similarity graded by merge level (dense only).

    Args:
        n_clusters: clusters of the tree cut that forms the groups.
        linkage: ``ward``, ``average``, ``complete`` or ``single``.
        grade: ``height`` (1 − merge height / max height) or ``rank`` (1 − merge rank / (N − 1)).
        dense_max: largest N accepted (memory grows as N²: about 20 bytes × N²).
    """

    name = "hierarchical"
    scalable = False

    def __init__(self, n_clusters: int = 100, linkage: str = "ward", grade: str = "height", dense_max: int = 10000):
        super().__init__(dense_max)
        self.n_clusters, self.linkage, self.grade = n_clusters, linkage, grade

    def check_params(self) -> None:
        super().check_params()
        check_int("n_clusters", self.n_clusters, 1)
        if self.linkage not in LINKAGES:
            raise ValueError(f"linkage must be one of {LINKAGES}, got {self.linkage!r}")
        if self.grade not in GRADES:
            raise ValueError(f"grade must be one of {GRADES}, got {self.grade!r}")

    def _fit(self, x: np.ndarray, neighbors: Optional[Neighbors]) -> None:
        from scipy.cluster.hierarchy import cophenet, fcluster, linkage
        from scipy.spatial.distance import squareform

        n = len(x)
        tree = linkage(x.astype(np.float64), method=self.linkage)
        if self.grade == "rank":
            tree = tree.copy()
            tree[:, 2] = np.arange(1, n)  # merge order as the level
        coph = cophenet(tree)  # condensed merge levels
        top = float(coph.max()) if coph.size else 0.0
        sim = 1.0 - coph / top if top > 0 else np.ones_like(coph)
        dense = squareform(sim.astype(np.float32), checks=False)
        np.fill_diagonal(dense, 1.0)
        self._dense = dense
        self.labels_ = fcluster(tree, t=min(self.n_clusters, n), criterion="maxclust").astype(np.int64) - 1
        self.groups_ = _groups(self.labels_)
