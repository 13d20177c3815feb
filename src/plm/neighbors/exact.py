"""Exact k-nearest neighbours in blocks of queries, so memory stays O(block × N).

Order guarantee (both the torch path and the faiss path): neighbours are sorted by their computed
float32 squared Euclidean distance, and **equal computed distances are broken by the lower
gallery index, also where a tie straddles the k-th position** (``torch.topk`` alone picks
arbitrarily among equal values at that boundary; such rows are re-sorted with a stable sort).

Before anything is computed, queries and gallery are translated and scaled jointly
(:func:`condition`: a coarse rounding of the mean subtracted, a power-of-two scale applied, in
float64), so a large common offset or an extreme scale does not cost the float32 expansion its
precision; returned distances are scaled back.

What is compared is the float32 ranking key ``‖g‖² − 2⟨q, g⟩`` (``‖q‖²`` is the same for a whole
row, so it is added only to the returned distances). Two distances equal in exact arithmetic
are equal keys whenever the arithmetic is exact (small integer-valued embeddings) or the two
gallery vectors are identical; otherwise float32 rounding decides, as in any float32 search.
faiss computes its distances in its own order of operations, so the two paths can disagree on
pairs whose distances differ by about float32 rounding, never on exact ties.

Wide rows use a two-level top-k (:func:`smallest_k`): minima of interleaved column groups first,
then ``torch.topk`` on the k best groups only, several times faster than ``torch.topk`` on the row.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def as_float32_matrix(x: np.ndarray | torch.Tensor, name: str = "embeddings") -> torch.Tensor:
    """A contiguous float32 CPU tensor of shape (N, D) with finite values.

    Raises:
        ValueError: not 2-D, or holding NaN or infinite values.
    """
    t = torch.as_tensor(np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x,
                                             dtype=np.float32))
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {tuple(t.shape)}")
    # a row sum is finite only if every entry is (a cheap test; an overflowing sum falls through)
    if not bool(torch.isfinite(t.sum(1)).all()) and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).any(1).sum())
        raise ValueError(f"{name} contain NaN or infinite values in {bad} row(s); fix or drop those items first")
    return t


def condition(*arrays: torch.Tensor, chunk: int = 8192) -> tuple[list[torch.Tensor], float]:
    """Translate and scale matrices jointly so that float32 (or float64) distances stay exact enough.

    Squared distances are computed by the expansion ``‖a‖² + ‖b‖² − 2⟨a, b⟩``, which loses every
    significant digit when the embeddings share a large common offset (every coordinate + 1000)
    and overflows (or underflows) at extreme scales (× 1e19). Distances do not depend on a
    translation, and a power-of-two scale changes them by an exact factor, so each column is
    shifted by a coarse rounding of its mean and every entry multiplied by a power of two that
    brings the largest magnitude to at most 1. All arithmetic is float64, one chunk of rows at a
    time; the shift is a multiple of the largest power of two not above the column's range, so
    integer-valued embeddings stay integer-valued (exact ties stay exact ties) and identical rows
    stay identical.

    Args:
        arrays: (N_i, D) float32 or float64 tensors with finite values, on one device (a query and a
            gallery set, or one set).
        chunk: rows converted at a time.

    Returns:
        the conditioned tensors (new tensors, same dtypes), and ``scale``: conditioned squared
        distances times ``scale`` are the original squared distances.
    """
    d, device = arrays[0].shape[1], arrays[0].device
    lo = torch.full((d,), float("inf"), dtype=torch.float64, device=device)
    hi = torch.full((d,), float("-inf"), dtype=torch.float64, device=device)
    total = torch.zeros(d, dtype=torch.float64, device=device)
    count = 0
    for a in arrays:
        for s in range(0, a.shape[0], chunk):
            part = a[s:s + chunk].double()
            lo, hi = torch.minimum(lo, part.amin(0)), torch.maximum(hi, part.amax(0))
            total += part.sum(0)
            count += part.shape[0]
    if count == 0:
        return [a.clone() for a in arrays], 1.0
    span = hi - lo
    grid = torch.where(span > 0, torch.exp2(torch.floor(torch.log2(span.clamp(min=1e-300)))), torch.ones_like(span))
    shift = torch.where(span > 0, torch.round(total / count / grid) * grid, lo)
    biggest = float(torch.maximum((hi - shift).abs(), (lo - shift).abs()).max())
    exponent = int(np.ceil(np.log2(biggest))) if biggest > 0 else 0
    factor = 2.0 ** -exponent
    out = []
    for a in arrays:
        c = torch.empty_like(a)
        for s in range(0, a.shape[0], chunk):
            c[s:s + chunk] = ((a[s:s + chunk].double() - shift) * factor).to(a.dtype) + 0.0  # + 0.0: no -0.0
        out.append(c)
    return out, 4.0 ** exponent


def has_duplicate_rows(x: torch.Tensor, chunk: int = 8192) -> bool:
    """Whether two rows of a float32 matrix are bitwise identical (hash, then exact check)."""
    n = x.shape[0]
    if n < 2:
        return False
    bits = x.contiguous().numpy().view(np.int32)
    mult = np.random.default_rng(12345).integers(1, 2**62, size=bits.shape[1], dtype=np.int64) | 1
    h = np.empty(n, dtype=np.int64)
    with np.errstate(over="ignore"):
        for s in range(0, n, chunk):
            h[s:s + chunk] = (bits[s:s + chunk].astype(np.int64) * mult).sum(1)
    order = np.argsort(h, kind="stable")
    same = np.flatnonzero(h[order][1:] == h[order][:-1])
    return any(np.array_equal(bits[order[i]], bits[order[i + 1]]) for i in same)


CHUNKS = 16  # interleaved column groups for the two-level top-k


def padded_width(n: int, chunks: int = CHUNKS) -> int:
    """``n`` rounded up to a multiple of ``chunks`` (key buffers are padded with +inf to it)."""
    return -(-n // chunks) * chunks


def chunk_minima(values: torch.Tensor, chunks: int = CHUNKS) -> torch.Tensor:
    """(B, M / chunks) minima of interleaved column groups: group w holds columns w, w + W, w + 2W, …

    Interleaved (not contiguous) groups make this a vectorised element-wise reduction, several
    times faster than a top-k pass.
    """
    b, m = values.shape
    if m % chunks:
        raise ValueError(f"width {m} is not a multiple of {chunks}")
    return values.view(b, chunks, m // chunks).amin(1)


def _topk_exact(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    m = values.shape[1]
    if k + 1 > m or 4 * k >= m:
        vals, idx = torch.sort(values, dim=1, stable=True)
        return vals[:, :k].contiguous(), idx[:, :k].contiguous()
    vals, idx = torch.topk(values, k + 1, dim=1, largest=False, sorted=True)
    straddle = vals[:, k - 1] == vals[:, k]
    vals, idx = vals[:, :k], idx[:, :k]
    # inside the top k, order equal values by index: sort by index, then stably by value
    o = torch.argsort(idx, dim=1)
    vals, idx = vals.gather(1, o), idx.gather(1, o)
    o = torch.sort(vals, dim=1, stable=True).indices
    vals, idx = vals.gather(1, o), idx.gather(1, o)
    if bool(straddle.any()):
        rows = straddle.nonzero().flatten()
        sv, si = torch.sort(values.index_select(0, rows), dim=1, stable=True)
        vals[rows], idx[rows] = sv[:, :k], si[:, :k]
    return vals, idx


def smallest_k(values: torch.Tensor, k: int, rows: Optional[torch.Tensor] = None,
               minima: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest entries of each row, ordered by (value, column index).

    Exact tie-breaking by the lower column index, including ties across the k-th position.
    Wide rows whose width is a multiple of :data:`CHUNKS` take a two-level path: the k
    interleaved column groups with the smallest minima hold the whole top k (unless the k-th
    and (k+1)-th minima are equal: those rows are sorted in full), so only k × CHUNKS
    candidates per row go through ``torch.topk``.

    Args:
        values: (B, M) tensor without NaN.
        k: 1 ≤ k ≤ M.
        rows: only these rows of ``values`` (default: all); results follow this order.
        minima: :func:`chunk_minima` of ``values`` if already computed.

    Returns:
        (values, column indices), each (len(rows), k).
    """
    b, m = values.shape
    if not 0 < k <= m:
        raise ValueError(f"k must be in [1, {m}], got {k}")
    w = m // CHUNKS
    if m % CHUNKS or w < 4 * (k + 1) or m < 1024:
        return _topk_exact(values if rows is None else values.index_select(0, rows), k)
    if not values.is_contiguous():
        values = values.contiguous()
    mins = chunk_minima(values) if minima is None else minima
    row_idx = torch.arange(b, device=values.device) if rows is None else rows
    if rows is not None:
        mins = mins.index_select(0, rows)
    cv, cw = torch.topk(mins, k + 1, dim=1, largest=False, sorted=True)
    cols = (cw[:, :k].unsqueeze(2) + w * torch.arange(CHUNKS, device=values.device)).reshape(len(row_idx), k * CHUNKS)
    cols = torch.sort(cols, dim=1).values  # ascending column: ties then resolve by index
    vals, pos = _topk_exact(values[row_idx.unsqueeze(1), cols], k)
    idx = cols.gather(1, pos)
    straddle = cv[:, k - 1] == cv[:, k]
    if bool(straddle.any()):
        fr = straddle.nonzero().flatten()
        vals[fr], idx[fr] = _topk_exact(values.index_select(0, row_idx[fr]), k)
    return vals, idx


def check_matrix(x: torch.Tensor, name: str = "embeddings") -> torch.Tensor:
    """A contiguous (N, D) tensor with finite values on ``x``'s device: float64 stays float64, any other
    dtype becomes float32.

    Raises:
        ValueError: not a 2-D tensor, or holding NaN or infinite values.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {tuple(x.shape)}")
    t = x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()
    if not bool(torch.isfinite(t.sum(1)).all()) and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).any(1).sum())
        raise ValueError(f"{name} contain NaN or infinite values in {bad} row(s); fix or drop those items first")
    return t


def knn(queries: np.ndarray | torch.Tensor, gallery: Optional[np.ndarray | torch.Tensor] = None, k: int = 1,
        exclude_self: bool = True, block_size: int = 1024, use_faiss: bool = False,
        exclude: Optional[np.ndarray] = None, conditioned: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest gallery items of every query (exact search, float32, numpy out).

    Args:
        queries: (Q, D) array.
        gallery: (N, D) array; ``None`` searches the queries themselves.
        k: neighbours per query.
        exclude_self: with ``gallery=None``, never return a query as its own neighbour (an exact
            duplicate of it at another index is returned normally).
        block_size: queries per block (memory ≈ block_size × N × 4 bytes).
        use_faiss: compute distances with faiss's exact flat index when importable; the result
            follows the same ordering rule (see the module docstring).
        exclude: (Q,) gallery index never returned for each query (the query's own row when the
            queries are gallery items); replaces ``exclude_self``.
        conditioned: translate and scale the inputs first (:func:`condition`); ``False`` skips it
            (and its copy of both sets) for inputs of moderate scale such as unit vectors.

    Returns:
        (distances, indices), each (Q, k): squared Euclidean distances ascending (clamped at 0),
        gallery indices, equal distances in ascending index order.

    Raises:
        ValueError: bad shapes, non-finite values, or ``k`` out of range.
    """
    q = as_float32_matrix(queries, "queries")
    g = None if gallery is None else as_float32_matrix(gallery, "gallery")
    ex = None if exclude is None else torch.as_tensor(np.asarray(exclude, dtype=np.int64))
    d, i = knn_tensors(q, g, k, exclude_self=exclude_self, block_size=block_size, use_faiss=use_faiss, exclude=ex,
                       conditioned=conditioned)
    return d.numpy(), i.numpy()


def knn_tensors(queries: torch.Tensor, gallery: Optional[torch.Tensor] = None, k: int = 1, exclude_self: bool = True,
                block_size: int = 1024, use_faiss: bool = False, exclude: Optional[torch.Tensor] = None,
                conditioned: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`knn` on tensors, where they live (CPU or GPU): the same search and ordering rule.

    Float64 inputs are searched in float64, anything else in float32; ``use_faiss`` applies to
    float32 CPU tensors only. Returns (distances in that dtype, int64 indices) on the input's device.

    Raises:
        ValueError: bad shapes, non-finite values, ``k`` out of range or bad ``exclude`` indices.
    """
    q = check_matrix(queries, "queries")
    self_search = gallery is None
    g = q if gallery is None else check_matrix(gallery, "gallery").to(device=q.device, dtype=q.dtype)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"queries and gallery must have the same width, got {tuple(q.shape)} and {tuple(g.shape)}")
    n = g.shape[0]
    if exclude is None and self_search and exclude_self:
        exclude = torch.arange(q.shape[0], device=q.device)
    if exclude is not None:
        exclude = torch.as_tensor(exclude, dtype=torch.long).to(q.device).reshape(-1)
        in_range = exclude.numel() == 0 or (int(exclude.min()) >= 0 and int(exclude.max()) < n)
        if exclude.shape[0] != q.shape[0] or not in_range:
            raise ValueError(f"exclude must hold one gallery index in [0, {n}) per query")
    skip = 0 if exclude is None else 1
    if not 0 < k <= n - skip:
        raise ValueError(f"k must be in [1, {n - skip}] for a gallery of {n} items, got {k}")
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    scale = 1.0
    if conditioned:
        if self_search:
            (q,), scale = condition(q)
            g = q
        else:
            (q, g), scale = condition(q, g)
    if use_faiss and q.device.type == "cpu" and q.dtype == torch.float32:
        try:
            d, i = _knn_faiss(q, g, k, None if exclude is None else exclude.numpy(), block_size)
            with np.errstate(over="ignore"):
                return torch.from_numpy((d * np.float32(scale)).astype(np.float32)), torch.from_numpy(i)
        except ImportError:
            pass
    g_sq = (g * g).sum(1)
    out_d = torch.empty((q.shape[0], k), dtype=q.dtype, device=q.device)
    out_i = torch.empty((q.shape[0], k), dtype=torch.long, device=q.device)
    buffer = torch.full((min(block_size, q.shape[0]), padded_width(n)), float("inf"), dtype=q.dtype, device=q.device)
    for start in range(0, q.shape[0], block_size):
        qb = q[start:start + block_size]
        key = buffer[:qb.shape[0]]
        torch.addmm(g_sq.unsqueeze(0), qb, g.T, beta=1.0, alpha=-2.0, out=key[:, :n])
        if exclude is not None:
            key[torch.arange(qb.shape[0], device=q.device), exclude[start:start + qb.shape[0]]] = float("inf")
        vals, idx = smallest_k(key, k)
        out_d[start:start + qb.shape[0]] = vals.add_((qb * qb).sum(1, keepdim=True)).clamp_(min=0)
        out_i[start:start + qb.shape[0]] = idx
    if scale != 1.0:
        with np.errstate(over="ignore"):
            out_d *= scale
    return out_d, out_i


def drop_self(indices: np.ndarray, self_ids: np.ndarray, k: int,
              distances: Optional[np.ndarray] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Each row's first ``k`` entries other than its own id (search results of items of the collection).

    Args:
        indices: (Q, M) neighbour ids from a search for M ≥ k neighbours (``-1`` = none found).
        self_ids: (Q,) the id of each query in the collection.
        k: entries kept per row.
        distances: the (Q, M) distances of ``indices``, filtered the same way.

    Returns:
        (Q, k) ids (``-1`` where a row has fewer than k others) and the matching distances
        (``inf`` there), or ``None`` without ``distances``.
    """
    indices = np.asarray(indices)
    keep = indices != np.asarray(self_ids).reshape(-1, 1)
    pos = np.cumsum(keep, axis=1) - 1
    keep &= pos < k
    rows = np.nonzero(keep)[0]
    out_i = np.full((len(indices), k), -1, np.int64)
    out_i[rows, pos[keep]] = indices[keep]
    if distances is None:
        return out_i, None
    out_d = np.full((len(indices), k), np.inf, np.float32)
    out_d[rows, pos[keep]] = np.asarray(distances)[keep]
    return out_i, out_d


def _knn_faiss(q: torch.Tensor, g: torch.Tensor, k: int, exclude: Optional[np.ndarray],
               block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss's exhaustive L2 search (``faiss.knn``, no copy of the gallery), with the ordering rule of
    :func:`knn` enforced afterwards.

    faiss returns equal distances in no defined order and may cut a tie at the k-th position;
    we ask for one neighbour more, re-sort each row by (distance, index), and redo with an
    exact full-row sort (on faiss's own distances) every row where a tie straddles position k
    or the query itself could not be dropped cleanly.
    """
    import faiss

    qn, gn = q.numpy(), g.numpy()
    skip = 0 if exclude is None else 1
    want = min(k + skip + 1, gn.shape[0])
    d, i = faiss.knn(qn, gn, want)
    n = len(qn)
    if exclude is not None:
        is_self = i == exclude[:, None]
        found_self = is_self.any(1)
        # drop the query itself where faiss returned it; elsewhere drop the last column
        drop = np.where(found_self, is_self.argmax(1), want - 1)
        keep = np.ones_like(i, dtype=bool)
        keep[np.arange(n), drop] = False
        d, i = d[keep].reshape(n, want - 1), i[keep].reshape(n, want - 1)
        redo = ~found_self
    else:
        redo = np.zeros(n, dtype=bool)
    if d.shape[1] > k:
        redo |= d[:, k - 1] == d[:, k]
    redo |= (i[:, :k] < 0).any(1)
    d, i = d[:, :k], i[:, :k]
    o = np.lexsort((i, d), axis=1) if d.size else np.zeros_like(i)
    d, i = np.take_along_axis(d, o, 1), np.take_along_axis(i, o, 1)
    bad = np.flatnonzero(redo)
    for start in range(0, len(bad), block_size):
        rows = bad[start:start + block_size]
        # faiss's exact distances to the whole gallery, then the same ordering rule
        full_d = np.empty((len(rows), gn.shape[0]), dtype=np.float32)
        full_i = np.empty((len(rows), gn.shape[0]), dtype=np.int64)
        full_d[:], full_i[:] = faiss.knn(qn[rows], gn, gn.shape[0])
        vals = np.full((len(rows), gn.shape[0]), np.inf, dtype=np.float32)
        np.put_along_axis(vals, full_i, full_d, 1)
        if exclude is not None:
            vals[np.arange(len(rows)), exclude[rows]] = np.inf
        sv, si = _topk_exact(torch.from_numpy(vals), k)
        d[rows], i[rows] = sv.numpy(), si.numpy()
    return np.maximum(d, 0).astype(np.float32), i.astype(np.int64)
