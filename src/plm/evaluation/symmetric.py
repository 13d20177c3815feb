"""The all-pairs scan behind the retrieval metrics, computing each distance once for two rows.

When every item queries every other item, the distance matrix is symmetric: the block of rows I
and columns J also serves rows J against columns I. Scanning only the blocks with I ≤ J halves
the matrix products, the dominant cost (at SOP scale 3.75 TFLOP become 1.9).

What each row needs is accumulated block by block:

- the first-hit count, i.e. how many items precede the row's nearest same-class item (p1, j1)
  in (distance, index) order: a column block left of j1 counts ``d ≤ p1``, one right of it
  ``d < p1``, the block holding j1 splits at j1. One comparison pass per block and direction.
- an exact running top-k in (distance, index) order, merged block by block (two-level: the k
  interleaved column groups with the smallest minima hold the block's top k).

Distances within a class are computed separately (float64 Gram matrices per class, rounded to
float32): they seed each row's top-k list (so its R-th value is finite from the first block, and
a block only matters to the rows whose minimum there is below it) and give each row its p1; in
the blocks, same-class entries are set to +inf. Every value a row compares is therefore defined
once, and the order and the tie rule are exact with respect to those values.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from plm.neighbors.exact import CHUNKS
from plm.utils.threads import limited_threads, pipelined

INF = float("inf")


def class_pair_distances(x: torch.Tensor, inverse: np.ndarray, max_entries: int = 50_000_000
                         ) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Squared distances of every unordered same-class pair (a < b), from float64 Gram matrices.

    Returns:
        (a, b, distance float32), or ``None`` when the classes are too large for this
        (more than ``max_entries`` Gram entries in all).
    """
    counts = np.bincount(inverse)
    if int((counts.astype(np.int64) ** 2).sum()) > max_entries:
        return None
    order = np.argsort(inverse, kind="stable")  # members of each class in ascending index order
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    xa, xb, vals = [], [], []
    for size in np.unique(counts[counts >= 2]):
        cls = np.flatnonzero(counts == size)
        members = order[starts[cls][:, None] + np.arange(size)]  # (C, size), ascending indices
        v = x[torch.from_numpy(members)].double()  # (C, size, D)
        sq = (v * v).sum(-1)
        d = (sq.unsqueeze(2) + sq.unsqueeze(1) - 2 * torch.bmm(v, v.transpose(1, 2))).clamp_(min=0).float()
        i, j = np.triu_indices(size, k=1)
        xa.append(members[:, i].reshape(-1))
        xb.append(members[:, j].reshape(-1))
        vals.append(d[:, i, j].reshape(-1).numpy())
    if not xa:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(xa), np.concatenate(xb), np.concatenate(vals)


def order_keys(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """int64 keys whose order is the (value, index) order: no two are equal, so top-k is exact.

    The float32 bits map to an int32 with the same order as the floats (negative values get
    their magnitude bits flipped; -0.0 is first made +0.0), shifted above the 32-bit index.
    """
    bits = (values + 0.0).contiguous().view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (ordered.to(torch.int64) << 32) | index


def key_index(keys: torch.Tensor) -> torch.Tensor:
    """The index part of :func:`order_keys`."""
    return keys & 0xFFFFFFFF


def positive_lists(n: int, a: np.ndarray, b: np.ndarray, v: np.ndarray, k: int) -> torch.Tensor:
    """(N, k) :func:`order_keys` of each row's same-class items, ascending, padded with the largest key."""
    rows = np.concatenate([a, b])
    cols = np.concatenate([b, a])
    vals = np.concatenate([v, v]).astype(np.float32)
    order = np.lexsort((cols, vals, rows))  # by row, then distance, then index
    rows, cols, vals = rows[order], cols[order], vals[order]
    start = np.searchsorted(rows, np.arange(n))
    slot = np.arange(len(rows)) - start[rows]
    out = torch.full((n, k), torch.iinfo(torch.int64).max, dtype=torch.int64)
    out[torch.from_numpy(rows), torch.from_numpy(slot)] = order_keys(torch.from_numpy(vals), torch.from_numpy(cols))
    return out


def key_value(keys: torch.Tensor) -> torch.Tensor:
    """The float32 value part of :func:`order_keys` (the map is its own inverse)."""
    o = (keys >> 32).to(torch.int32)
    return (o ^ ((o >> 31) & 0x7FFFFFFF)).view(torch.float32)


def _count_lines(block: torch.Tensor, lines: torch.Tensor, p1: torch.Tensor, p1_up: torch.Tensor, j1: torch.Tensor,
                 offset: int, dim: int, buf: torch.Tensor) -> torch.Tensor:
    """For some rows (``dim=1``) or columns (``dim=0``) of a block whose same-class entries are
    +inf, how many entries precede (p1, j1); positions along the line start at ``offset``."""
    full = len(lines) > block.shape[1 - dim] // 2
    if dim == 1:
        sub = block if full else block.index_select(0, lines)
    else:
        sub = (block if full else block.index_select(1, lines)).t()
    length = sub.shape[1]
    t = torch.where(j1 >= offset + length, p1_up, p1)  # a block left of j1: ties come first
    if full:
        thr = torch.full((sub.shape[0],), -INF)
        thr[lines] = t
    else:
        thr = t
    count = torch.lt(sub, thr.unsqueeze(1), out=buf[:sub.numel()].view(sub.shape)).sum(1)
    count = count[lines] if full else count
    inside = ((j1 >= offset) & (j1 < offset + length)).nonzero().flatten()
    if len(inside):  # an entry equal to p1 (same-class ones are +inf here) precedes if left of j1
        rows_in = lines[inside] if full else inside
        equal = (sub.index_select(0, rows_in) == p1[inside].unsqueeze(1)).sum(1)
        for i in inside[equal > 0].tolist():
            row = sub[int(lines[i]) if full else i]
            count[i] += float((row[:int(j1[i]) - offset] == p1[i]).sum())
    return count


def _smallest_keys(keys: torch.Tensor, k: int) -> torch.Tensor:
    return torch.topk(keys, min(k, keys.shape[1]), dim=1, largest=False, sorted=True).values


def _group_minima(block: torch.Tensor, k: int, dim: int) -> Optional[torch.Tensor]:
    """Minima of the interleaved groups of each line (row for ``dim=1``, column for ``dim=0``),
    (lines, groups); ``None`` when lines are too short for the two-level top-k."""
    length = block.shape[dim]
    w = length // CHUNKS
    if length % CHUNKS or w < 4 * (min(k, length) + 1):
        return None
    if dim == 1:
        return block.view(block.shape[0], CHUNKS, w).amin(1)
    return block.view(CHUNKS, w, block.shape[1]).amin(0).t()


def _rows_topk(block: torch.Tensor, rows: torch.Tensor, k: int, offset: int, dim: int,
               mins: Optional[torch.Tensor]) -> torch.Tensor:
    """Keys of the exact (value, position) top-k of some rows (``dim=1``) or columns (``dim=0``)
    of a contiguous block; positions are shifted by ``offset``.

    Two-level when the line is long: the k interleaved groups with the smallest minima hold the
    whole top k, unless the k-th and (k+1)-th minima are equal (those lines are taken in full).
    """
    length = block.shape[dim]
    k = min(k, length)
    w = length // CHUNKS
    positions = torch.arange(offset, offset + length)

    def full(sel: torch.Tensor) -> torch.Tensor:
        lines = block.index_select(0, sel) if dim == 1 else block.index_select(1, sel).t().contiguous()
        return _smallest_keys(order_keys(lines, positions.expand_as(lines)), k)

    if mins is None:
        return full(rows)
    cv, cw = torch.topk(mins, k + 1, dim=1, largest=False, sorted=True)
    pos = (cw[:, :k].unsqueeze(2) + w * torch.arange(CHUNKS)).reshape(len(rows), k * CHUNKS)
    if dim == 1:
        vals = torch.take(block, rows.unsqueeze(1) * length + pos)
    else:
        vals = torch.take(block, pos * block.shape[1] + rows.unsqueeze(1))
    keys = _smallest_keys(order_keys(vals, pos + offset), k)
    straddle = (cv[:, k - 1] == cv[:, k]).nonzero().flatten()
    if len(straddle):
        keys[straddle] = full(rows[straddle])
    return keys


def _scan_lines(block: torch.Tensor, real: torch.Tensor, lines: slice, offset: int, dim: int, k: int,
                state: dict) -> None:
    """Fold one block into the first-hit counts and top-k lists of ``lines`` (rows for
    ``dim=1``, columns for ``dim=0``); ``real`` is the block without its +inf padding."""
    top, tau, slot, first = state["top"], state["tau"], state["slot"], state["first"]
    p1, p1_up, j1 = state["p1"][lines], state["p1_up"][lines], state["j1"][lines]
    mins = _group_minima(block, k, dim)
    line_min = (block.amin(dim) if mins is None else mins.amin(1))[:lines.stop - lines.start]
    # first hits: only lines with an entry ≤ p1 here can have something preceding it
    need = (line_min <= p1).nonzero().flatten()
    if len(need):
        first[need + lines.start] += _count_lines(real, need, p1[need], p1_up[need], j1[need], offset, dim,
                                                  state["buf"])
    # top-k: only lines with an entry ≤ their current k-th value can improve
    rows = (line_min <= tau[lines]).nonzero().flatten()
    if not len(rows):
        return
    g = rows + lines.start
    new = _rows_topk(block, rows, k, offset, dim, None if mins is None else mins.index_select(0, rows))
    merged = _smallest_keys(torch.cat([top[g], new], 1), k)
    top[g] = merged
    tau[g] = key_value(merged.gather(1, slot[g].unsqueeze(1)).squeeze(1))


def symmetric_scan(x: torch.Tensor, pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
                   block_size: int = 1024, threads: Optional[int] = None) -> tuple[np.ndarray, torch.Tensor]:
    """First-hit counts and exact top-k lists of every item against all other items.

    Args:
        x: (N, D) float32 embeddings.
        pairs: same-class pairs (a, b, distance) with a < b (see :func:`class_pair_distances`).
        block_size: rows and columns per block (a multiple of 16 keeps the two-level top-k).
        threads: cores to use (default: torch's intra-op thread count). With more than one, the
            distance products run ahead on ``threads + 1`` single-threaded workers while this
            thread folds them in order (:func:`~plm.utils.threads.pipelined`); with one, all runs
            here. Every product is single-threaded either way, so the result does not depend on it.

    Returns:
        first (N,) int64: items preceding each row's nearest same-class item (0 where it has
        none); top (N, k) int64, k = the largest class size - 1: the first R entries of a row are
        its R nearest other items in (distance, index) order (R = its same-class count; the
        entries after them are not meaningful).
    """
    n, d = x.shape
    a, b, v = pairs
    r = torch.from_numpy(np.bincount(np.concatenate([a, b]), minlength=n))
    k = max(1, min(int(r.max()) if n else 1, n - 1))
    # running top-k lists start as the row's own same-class items, so the k-th value (tau) is finite
    # from the start and a block only matters to the rows whose minimum there is ≤ tau
    top = positive_lists(n, a, b, v, k)
    slot = (r - 1).clamp(min=0)
    tau = torch.where(r > 0, key_value(top.gather(1, slot.unsqueeze(1)).squeeze(1)), torch.tensor(-INF))
    p1 = torch.where(r > 0, key_value(top[:, 0]), torch.tensor(-INF))
    j1 = torch.where(r > 0, key_index(top[:, 0]), torch.tensor(-1))
    j1_np = j1.numpy()
    p1_up = torch.nextafter(p1, torch.tensor(INF))
    # the same-class pairs of each block pair (a < b, so block(a) ≤ block(b))
    nb = -(-n // block_size)
    key = (a // block_size) * nb + b // block_size
    order = np.argsort(key, kind="stable")
    a, b, v, key = a[order], b[order], v[order], key[order]
    bounds = np.searchsorted(key, np.arange(nb * nb + 1))
    # augmented factors: [x, |x|², 1] · [-2x, 1, |x|²] = |x_i - x_j|² in one product
    width = -(-(d + 2) // 16) * 16
    sq = (x * x).sum(1, keepdim=True)

    def left(s: slice) -> torch.Tensor:
        out = torch.zeros(s.stop - s.start, width)
        out[:, :d], out[:, d:d + 1], out[:, d + 1] = x[s], sq[s], 1.0
        return out

    def right(s: slice) -> torch.Tensor:
        out = torch.zeros(s.stop - s.start, width)
        out[:, :d], out[:, d], out[:, d + 1:d + 2] = x[s] * -2.0, 1.0, sq[s]
        return out

    first = torch.zeros(n, dtype=torch.float32)
    state = {"top": top, "tau": tau, "slot": slot, "first": first, "p1": p1, "p1_up": p1_up, "j1": j1}
    side = -(-block_size // CHUNKS) * CHUNKS
    state["buf"] = torch.empty(side * side)  # flat, so that every block view is contiguous
    blocks = [(bi, bj) for bi in range(nb) for bj in range(bi, nb)]

    def product(block: tuple[int, int], dist: torch.Tensor) -> torch.Tensor:
        """The (padded) distance block of row block bi and column block bj, written into ``dist``."""
        bi, bj = block
        si = slice(bi * block_size, min(n, (bi + 1) * block_size))
        sj = slice(bj * block_size, min(n, (bj + 1) * block_size))
        h, w = si.stop - si.start, sj.stop - sj.start
        # padded with +inf to whole groups; a padded position may alias an index of the next
        # block, harmless: +inf never ranks within a row's first R (its R same-class items
        # are finite and always in its list)
        hp, wp = -(-h // CHUNKS) * CHUNKS, -(-w // CHUNKS) * CHUNKS
        blk = dist[:hp * wp].view(hp, wp)
        torch.mm(left(si), right(sj).T, out=blk[:h, :w])
        if wp > w:
            blk[:, w:] = INF
        if hp > h:
            blk[h:] = INF
        return blk

    def fold(bi: int, bj: int, blk: torch.Tensor) -> None:
        """Fold one distance block into the state of its rows and (off the diagonal) its columns."""
        si = slice(bi * block_size, min(n, (bi + 1) * block_size))
        sj = slice(bj * block_size, min(n, (bj + 1) * block_size))
        h, w = si.stop - si.start, sj.stop - sj.start
        lo, hi = bounds[bi * nb + bj], bounds[bi * nb + bj + 1]
        if hi > lo:  # same-class items: already in the lists, and never preceding p1
            ra = torch.from_numpy(a[lo:hi] - si.start)
            cb = torch.from_numpy(b[lo:hi] - sj.start)
            blk[ra, cb] = INF
            if bi == bj:
                blk[cb, ra] = INF
        if bi == bj:
            blk.fill_diagonal_(INF)
        _scan_lines(blk, blk[:h, :w], si, sj.start, 1, k, state)
        if bi != bj:  # rows sj against columns si, from the same block
            _scan_lines(blk, blk[:h, :w], sj, si.start, 0, k, state)

    cores = torch.get_num_threads() if threads is None else threads
    if cores <= 1 or len(blocks) < 2:
        dist = torch.empty(side * side)
        with limited_threads(1):  # single-threaded products on every path: the same bits
            for bi, bj in blocks:
                fold(bi, bj, product((bi, bj), dist))
    else:
        # one worker more than cores: the products go on while this thread folds, and a core that
        # another process holds costs a smaller share of the scan (measured: docs/benchmarks.md)
        for (bi, bj), blk in pipelined(blocks, product, cores + 1, side * side):
            fold(bi, bj, blk)
    first_np = first.to(torch.int64).numpy()
    first_np[j1_np < 0] = 0
    return first_np, key_index(top)
