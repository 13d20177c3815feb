"""Nearest-neighbour candidate lists with bounded memory: exact blocks, or faiss IVF at scale.

Exact search computes squared distances one block of queries at a time (memory ≈ block × N floats),
on whatever device the points live on. Past ``exact_max`` points on the CPU, and when faiss is
importable, an inverted-file index (``IVF{nlist},Flat``, ``nprobe`` lists probed per query) gives
approximate neighbours an order of magnitude faster; its recall is reported by the benchmark.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

EXACT_MAX = 20_000  # points up to which the default search is exact


@torch.no_grad()
def knn_candidates(x: Tensor, k: int, approximate: Optional[bool] = None, block_size: int = 2048,
                   nprobe: int = 12, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest other points of every point, nearest first.

    Args:
        x: (N, d) points.
        k: neighbours per point (at most N - 1).
        approximate: ``True`` = faiss IVF (falls back to exact when faiss is missing or ``x`` is on
            a GPU), ``False`` = exact, ``None`` = approximate only past 20,000 points on the CPU.
        block_size: queries per exact block (memory ≈ block_size × N × 4 bytes).
        nprobe: inverted lists probed per query (approximate search).
        seed: seed of the IVF coarse quantiser's k-means.

    Returns:
        (squared distances, indices), each (N, k), on ``x``'s device; distances ascending.
    """
    if x.ndim != 2:
        raise ValueError(f"expected (N, d) points, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} points, got {k}")
    if approximate is None:
        approximate = n > EXACT_MAX
    if approximate and x.device.type == "cpu":
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


def _knn_ivf(x: Tensor, k: int, nprobe: int, seed: int) -> tuple[Tensor, Tensor]:
    import faiss

    data = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    n, d = data.shape
    nlist = max(1, min(int(math.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist)
    index.cp.seed = seed
    index.cp.niter = 10
    index.train(data)
    index.add(data)
    index.nprobe = min(nprobe, nlist)
    dist, idx = index.search(data, k + 1)
    rows = np.arange(n)[:, None]
    keep = idx != rows
    keep[keep.all(1), -1] = False  # self not returned (exact duplicates): drop the last column
    dist = dist[keep].reshape(n, k)
    idx = idx[keep].reshape(n, k)
    missing = idx < 0  # fewer than k found in the probed lists: fall back to exact for those rows
    if missing.any():
        bad = np.flatnonzero(missing.any(1))
        sq = (data * data).sum(1)
        for start in range(0, len(bad), 1024):
            b = bad[start:start + 1024]
            dd = sq[b, None] + sq[None, :] - 2.0 * data[b] @ data.T
            dd[np.arange(len(b)), b] = np.inf
            part = np.argpartition(dd, k, axis=1)[:, :k]
            order = np.take_along_axis(dd, part, 1).argsort(1)
            idx[b] = np.take_along_axis(part, order, 1)
            dist[b] = np.take_along_axis(dd, idx[b], 1)
    return (torch.from_numpy(np.maximum(dist, 0)).to(x.dtype), torch.from_numpy(idx.astype(np.int64)))
