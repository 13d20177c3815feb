"""Nearest-neighbour candidate lists with bounded memory.

Exact search (the default) is :func:`plm.neighbors.exact.knn_tensors`, the project's one exact
k-NN: on CPU float32 points faiss's flat index when installed, else torch blocks of queries
(memory ≈ block × N floats) where the points live, CPU or GPU; ties broken by index. ``approximate=True`` uses a
faiss inverted-file index (``IVF√N,Flat``, ``nprobe`` lists probed per query): several times less
work at N in the tens of thousands, at a recall below 1 (the benchmark reports it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from plm.neighbors.exact import drop_self, knn_tensors


@torch.no_grad()
def knn_candidates(x: Tensor, k: int, approximate: bool = False, block_size: int = 2048, nprobe: int = 12,
                   seed: int = 0, use_faiss: bool = True) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest other points of every point, nearest first.

    Args:
        x: (N, d) points.
        k: neighbours per point (at most N - 1).
        approximate: faiss IVF search instead of exact (exact when faiss is missing or on a GPU).
        block_size: queries per torch block (memory ≈ block_size × N × 4 bytes).
        nprobe: inverted lists probed per query (approximate search).
        seed: seed of the IVF coarse quantiser's k-means.
        use_faiss: allow faiss on CPU tensors.

    Returns:
        (squared distances, indices), each (N, k), on ``x``'s device; distances ascending, equal
        distances in index order (exact search).
    """
    if x.ndim != 2:
        raise ValueError(f"expected (N, d) points, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} points, got {k}")
    if approximate and use_faiss and x.device.type == "cpu":
        try:
            return _knn_ivf(x, k, nprobe, seed, block_size)
        except ImportError:
            pass
    # the project's one exact search (faiss's flat index for float32 CPU points when allowed and installed)
    d, i = knn_tensors(x, k=k, block_size=block_size, use_faiss=use_faiss)
    return d.to(x.dtype), i


def _knn_ivf(x: Tensor, k: int, nprobe: int, seed: int, block_size: int) -> tuple[Tensor, Tensor]:
    import faiss

    data = np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)
    n, d = data.shape
    nlist = max(1, min(int(math.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist)
    index.cp.seed = seed
    index.cp.niter = 10
    index.train(data)
    index.add(data)
    index.nprobe = min(nprobe, nlist)
    found_d, found_i = index.search(data, k + 1)
    idx, dist = drop_self(found_i, np.arange(n), k, found_d)
    assert dist is not None
    bad = np.flatnonzero((idx < 0).any(1))  # fewer than k found in the probed lists: exact for those rows
    if len(bad):
        t = torch.from_numpy(data)
        bd, bi = knn_tensors(t[torch.from_numpy(bad)], t, k, block_size=block_size, exclude=torch.from_numpy(bad))
        dist[bad], idx[bad] = bd.numpy(), bi.numpy()
    return torch.from_numpy(np.maximum(dist, 0)).to(x.dtype), torch.from_numpy(idx.astype(np.int64))
