"""Exact k-nearest neighbours in blocks of queries, so memory stays O(block × N).

Distances are squared Euclidean. Ties are broken by the lower gallery index. faiss, when
installed and asked for, gives the same neighbours (up to ties) faster.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def knn(queries: np.ndarray | torch.Tensor, gallery: Optional[np.ndarray | torch.Tensor] = None, k: int = 1,
        exclude_self: bool = True, block_size: int = 2048, use_faiss: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest gallery items of every query.

    Args:
        queries: (Q, D) array.
        gallery: (N, D) array; ``None`` searches the queries themselves.
        k: neighbours per query.
        exclude_self: with ``gallery=None``, never return a query as its own neighbour.
        block_size: queries per block (memory ≈ block_size × N × 4 bytes).
        use_faiss: use faiss's exact flat index when importable.

    Returns:
        (distances, indices), each (Q, k): squared Euclidean distances ascending, gallery indices.
    """
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32))
    self_search = gallery is None
    g = q if self_search else torch.as_tensor(np.asarray(gallery, dtype=np.float32))
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"queries and gallery must be 2-D with the same width, got {tuple(q.shape)} and {tuple(g.shape)}")
    skip = 1 if (self_search and exclude_self) else 0
    if not 0 < k <= g.shape[0] - skip:
        raise ValueError(f"k must be in [1, {g.shape[0] - skip}], got {k}")
    if use_faiss:
        try:
            return _knn_faiss(q.numpy(), g.numpy(), k, skip)
        except ImportError:
            pass
    g_sq = (g * g).sum(1)
    out_d = np.empty((q.shape[0], k), dtype=np.float32)
    out_i = np.empty((q.shape[0], k), dtype=np.int64)
    for start in range(0, q.shape[0], block_size):
        qb = q[start:start + block_size]
        d = torch.addmm(g_sq.unsqueeze(0), qb, g.T, beta=1.0, alpha=-2.0)
        d.add_((qb * qb).sum(1, keepdim=True)).clamp_(min=0)
        if skip:
            rows = torch.arange(qb.shape[0])
            d[rows, rows + start] = float("inf")
        vals, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)
        # canonical tie order: equal distances by ascending index
        order = np.lexsort((idx.numpy(), vals.numpy()), axis=1)
        out_d[start:start + qb.shape[0]] = np.take_along_axis(vals.numpy(), order, 1)
        out_i[start:start + qb.shape[0]] = np.take_along_axis(idx.numpy(), order, 1)
    return out_d, out_i


def _knn_faiss(q: np.ndarray, g: np.ndarray, k: int, skip: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatL2(g.shape[1])
    index.add(np.ascontiguousarray(g))
    d, i = index.search(np.ascontiguousarray(q), k + skip)
    if skip:
        rows = np.arange(len(q))[:, None]
        keep = i != rows
        # drop the query itself (or the last column when it was not returned: exact duplicates)
        keep[keep.all(1), -1] = False
        d = d[keep].reshape(len(q), k)
        i = i[keep].reshape(len(q), k)
    return d.astype(np.float32), i.astype(np.int64)
