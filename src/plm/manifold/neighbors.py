"""Nearest-neighbour candidate lists with bounded memory.

Exact search (the default) on CPU tensors is :func:`plm.evaluation.knn` (faiss's flat index when
installed, else torch blocks; ties broken by index); on other devices it runs in torch blocks of
queries (memory ≈ block × N floats) where the points live. ``approximate=True`` uses a
faiss inverted-file index (``IVF√N,Flat``, ``nprobe`` lists probed per query): several times less
work at N in the tens of thousands, at a recall below 1 (the benchmark reports it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


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
        (squared distances, indices), each (N, k), on ``x``'s device; distances ascending.
    """
    if x.ndim != 2:
        raise ValueError(f"expected (N, d) points, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} points, got {k}")
    if x.device.type == "cpu":
        if not approximate:  # the project's exact search (faiss flat when allowed and installed)
            from plm.evaluation.knn import knn

            d, i = knn(x, k=k, block_size=block_size, use_faiss=use_faiss)
            return torch.from_numpy(d).to(x.dtype), torch.from_numpy(i)
        if use_faiss:
            try:
                return _knn_ivf(x, k, nprobe, seed)
            except ImportError:
                pass
    return _knn_exact(x, k, block_size)


def _knn_exact(x: Tensor, k: int, block_size: int) -> tuple[Tensor, Tensor]:
    n = x.shape[0]
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    sq = (work * work).sum(1)
    out_d = torch.empty(n, k, dtype=work.dtype, device=x.device)
    out_i = torch.empty(n, k, dtype=torch.long, device=x.device)
    for start in range(0, n, block_size):
        q = work[start:start + block_size]
        d = torch.addmm(sq.unsqueeze(0), q, work.T, beta=1.0, alpha=-2.0)
        d.add_(sq[start:start + q.shape[0]].unsqueeze(1)).clamp_(min=0)
        rows = torch.arange(q.shape[0], device=x.device)
        d[rows, rows + start] = float("inf")
        vals, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)
        out_d[start:start + q.shape[0]] = vals
        out_i[start:start + q.shape[0]] = idx
    return out_d, out_i


def _drop_self(dist: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(idx)
    keep = idx != np.arange(n)[:, None]
    keep[keep.all(1), -1] = False  # self not returned (exact duplicates): drop the last column
    return dist[keep].reshape(n, k), idx[keep].reshape(n, k)


def _knn_ivf(x: Tensor, k: int, nprobe: int, seed: int) -> tuple[Tensor, Tensor]:
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
    dist, idx = _drop_self(*index.search(data, k + 1), k)
    bad = np.flatnonzero((idx < 0).any(1))  # fewer than k found in the probed lists: exact for those rows
    if len(bad):
        sq = (data * data).sum(1)
        for start in range(0, len(bad), 1024):
            b = bad[start:start + 1024]
            dd = sq[b, None] + sq[None, :] - 2.0 * data[b] @ data.T
            dd[np.arange(len(b)), b] = np.inf
            part = np.argpartition(dd, k, axis=1)[:, :k]
            order = np.take_along_axis(dd, part, 1).argsort(1)
            idx[b] = np.take_along_axis(part, order, 1)
            dist[b] = np.take_along_axis(dd, idx[b], 1)
    return torch.from_numpy(np.maximum(dist, 0)).to(x.dtype), torch.from_numpy(idx.astype(np.int64))
