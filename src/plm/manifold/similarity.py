"""Point-to-piece and point-to-point similarity of the PL model (docs/method.md §4).

For a point x and the piece (anchor a, mean μ, orthonormal basis U) of another point:
x̂ = μ + U Uᵀ (x − μ) is the projection of x on the piece, o = ‖x − x̂‖ the orthogonal distance,
p = ‖x̂ − a‖ the in-piece distance to the anchor, and

    s′ = α · β,   α = (1 + o/2)^(−N_α),   β = (1 + p)^(−N_β),

a number in (0, 1]. The point-to-point similarity symmetrises s′: s = ½(s′(i, j) + s′(j, i))
(or the max), with s(i, i) = 1.

All distances come from inner products, so nothing of size P × M × d is ever built:
o² = ‖x − μ‖² − ‖c‖² and p² = ‖r‖² + ‖e + c‖², where c = Uᵀ(x − μ), e = Uᵀ(μ − a) and r is the
part of μ − a outside the piece. Basis columns that are zero (rank-deficient pieces) drop out.
"""

from __future__ import annotations

from typing import Literal, Optional, overload

import torch
from torch import Tensor

import plm.manifold.kernels as kernels
from plm.manifold.config import ManifoldConfig
from plm.manifold.pieces import Pieces, batch_coordinates, build_means_and_bases, check_points, fit_pieces, prepare
from plm.neighbors.candidates import knn_candidates

_TINY = 1e-12  # under the square roots, so gradients stay finite at zero distance
PRECISE_MAX = 2 ** 27  # pairwise_similarity works in float64 up to N² · d of this size
NEAR_PIECE = 1e-4  # _fitted_directed_similarity re-scores pairs with o² ≤ this share of ‖x − μ‖² from differences


def alpha_beta(o2: Tensor, p2: Tensor, n_alpha: float, n_beta: float) -> Tensor:
    """s′ = (1 + o/2)^(−N_α) · (1 + p)^(−N_β) from squared distances o² off and p² along a piece
    (negative values, rounding, count as 0)."""
    tiny = _TINY if (o2.requires_grad or p2.requires_grad) else 0.0
    o = o2.clamp(min=0).add(tiny).sqrt()
    p = p2.clamp(min=0).add(tiny).sqrt()
    return torch.exp(-n_alpha * torch.log1p(o / 2) - n_beta * torch.log1p(p))


def directed_similarity(points: Tensor, anchors: Tensor, means: Tensor, bases: Tensor, n_alpha: float,
                        n_beta: float) -> Tensor:
    """s′(x_i, piece_j) for every point i and every piece j.

    Differentiable in all inputs (it is also the proxy-point similarity: there ``anchors`` =
    ``means`` = the proxy locations and ``bases`` their QR-orthonormalised directions).

    Args:
        points: (P, d).
        anchors: (M, d) the point each piece belongs to.
        means: (M, d) the pieces' means μ_j.
        bases: (M, d, m) orthonormal (or zero) columns U_j.
        n_alpha: N_α ≥ 0.
        n_beta: N_β ≥ 0.

    Returns:
        (P, M) similarities in (0, 1].
    """
    _check_piece_shapes(points, anchors, means, bases)
    mcount, d, m = bases.shape
    if points.shape[0] == 0 or mcount == 0 or m == 0:
        base = points.new_zeros(points.shape[0], mcount)
        if m == 0:
            o2 = ((points[:, None] - means[None]) ** 2).sum(2)
            return alpha_beta(o2, ((means - anchors) ** 2).sum(1)[None].expand_as(o2), n_alpha, n_beta)
        return base
    o2, p2, _ = _directed_terms(points, anchors, means, bases)
    return alpha_beta(o2, p2, n_alpha, n_beta)


def _directed_terms(points: Tensor, anchors: Tensor, means: Tensor, bases: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(P, M) o², p² and ‖x − μ‖² of every point against every piece (m ≥ 1, P, M ≥ 1)."""
    mcount, d, m = bases.shape
    flat = bases.permute(1, 0, 2).reshape(d, mcount * m)  # (d, M*m)
    c = (points @ flat).view(-1, mcount, m) - torch.einsum("jd,jdk->jk", means, bases)[None]  # (P, M, m)
    c2 = (c * c).sum(2)
    x2 = (points * points).sum(1, keepdim=True)
    mu2 = (means * means).sum(1)[None]
    dist2 = x2 + mu2 - 2.0 * points @ means.T  # ‖x − μ‖²
    o2 = dist2 - c2
    off = means - anchors
    e = torch.einsum("jd,jdk->jk", off, bases)  # (M, m)
    r2 = ((off * off).sum(1) - (e * e).sum(1)).clamp(min=0)
    p2 = r2[None] + ((e[None] + c) ** 2).sum(2)
    return o2, p2, dist2


def paired_directed_similarity(points: Tensor, anchors: Tensor, means: Tensor, bases: Tensor, n_alpha: float,
                               n_beta: float) -> Tensor:
    """s′(points[q], piece q) for aligned rows: (Q, d) points and Q pieces → (Q,)."""
    _check_piece_shapes(points, anchors, means, bases)
    if points.shape[0] != anchors.shape[0]:
        raise ValueError(f"need as many points as pieces, got {points.shape[0]} and {anchors.shape[0]}")
    diff = points - means
    c = torch.einsum("qd,qdk->qk", diff, bases)
    o2 = (diff * diff).sum(1) - (c * c).sum(1)
    off = means - anchors
    e = torch.einsum("qd,qdk->qk", off, bases)
    r2 = ((off * off).sum(1) - (e * e).sum(1)).clamp(min=0)
    p2 = r2 + ((e + c) ** 2).sum(1)
    return alpha_beta(o2, p2, n_alpha, n_beta)


def _check_piece_shapes(points: Tensor, anchors: Tensor, means: Tensor, bases: Tensor) -> None:
    if points.ndim != 2 or anchors.ndim != 2 or means.shape != anchors.shape or bases.ndim != 3:
        raise ValueError(f"expected points (P, d), anchors and means (M, d), bases (M, d, m); got "
                         f"{tuple(points.shape)}, {tuple(anchors.shape)}, {tuple(means.shape)}, {tuple(bases.shape)}")
    if bases.shape[:2] != anchors.shape or points.shape[1] != anchors.shape[1]:
        raise ValueError(f"dimension mismatch: points {tuple(points.shape)}, anchors {tuple(anchors.shape)}, "
                         f"bases {tuple(bases.shape)}")


def _symmetrize(a: Tensor, b: Tensor, how: str) -> Tensor:
    if how == "mean":
        return 0.5 * (a + b)
    if how == "max":
        return torch.maximum(a, b)
    if how == "min":
        return torch.minimum(a, b)
    return torch.sqrt(a * b)  # "geometric"


@torch.no_grad()
def pairwise_similarity(x: Tensor, pieces: Pieces, config: ManifoldConfig = ManifoldConfig(),
                        block_size: int = 1024) -> Tensor:
    """Symmetrised PL similarity of every pair of the points the pieces were fitted on.

    Args:
        x: (N, d) the same points given to :func:`fit_pieces`.
        pieces: their pieces.
        config: the PL options (N_α, N_β, symmetrisation, normalisation).
        block_size: rows scored together (memory ≈ block_size × N × m doubles).

    Returns:
        (N, N) similarities in (0, 1], symmetric, diagonal 1.
    """
    x = prepare(x, config)
    if x.shape != pieces.anchors.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but the pieces were fitted on {tuple(pieces.anchors.shape)}")
    if pieces.gram is not None and torch.equal(x, pieces.anchors):
        return _pieces_similarity(pieces, config, block_size)
    return _symmetric(_directed_blocks(x, pieces, config, block_size), config.symmetrize, x.dtype)


def _pieces_similarity(pieces: Pieces, config: ManifoldConfig, block_size: int = 1024) -> Tensor:
    """:func:`pairwise_similarity` of the points the pieces were fitted on."""
    x = pieces.anchors
    if pieces.gram is not None:
        directed = _fitted_directed_similarity(pieces, config.n_alpha, config.n_beta)
    else:
        directed = _directed_blocks(x, pieces, config, block_size)
    return _symmetric(directed, config.symmetrize, x.dtype)


def _symmetric(directed: Tensor, how: str, dtype: torch.dtype) -> Tensor:
    s = _symmetrize(directed, directed.T, how).to(dtype)
    s.fill_diagonal_(1.0)
    return s


def _directed_blocks(x: Tensor, pieces: Pieces, config: ManifoldConfig, block_size: int) -> Tensor:
    """(N, N) s′(x_i, piece j) from the pieces' means and bases, ``block_size`` rows at a time."""
    n, d = x.shape
    # float64 keeps o = sqrt(‖x − μ‖² − ‖c‖²) accurate for points close to a piece (errors ≈ 1e-4
    # in s otherwise); it costs little at batch sizes, so only large inputs stay in their own dtype
    small = n * n * d <= PRECISE_MAX
    work = torch.float64 if small and x.dtype in (torch.float32, torch.float16, torch.bfloat16) else x.dtype
    anchors, means, bases = pieces.anchors.to(work), pieces.means.to(work), pieces.bases.to(work)
    directed = torch.empty(n, n, dtype=work, device=x.device)
    for start in range(0, n, block_size):
        directed[start:start + block_size] = directed_similarity(x[start:start + block_size].to(work), anchors, means,
                                                                 bases, config.n_alpha, config.n_beta)
    return directed


def _fitted_directed_similarity(pieces: Pieces, n_alpha: float, n_beta: float) -> Tensor:
    """(N, N) float64 s′(x_i, piece j) of the fitted points (pieces that hold their Gram matrix).

    The points are taken in coordinates of their span (:attr:`Pieces.coordinates`,
    R^r with r ≤ N), where the pieces are built from their coefficients and every pair is scored
    by the formula of :func:`directed_similarity` in float64: the cost is that of N points in
    R^N, not R^d. o² = ‖x − μ‖² − ‖c‖² is a difference of squares, so the pairs of a point on or
    next to a piece (o² ≤ :data:`NEAR_PIECE` · ‖x − μ‖²: its members, points in its plane) are
    scored again from their differences, where the rounding stays at float64's.
    """
    n = len(pieces)
    if n == 0:
        return pieces.anchors.new_zeros(0, 0, dtype=torch.float64)
    y = pieces.coordinates if pieces.coordinates is not None else batch_coordinates(pieces.anchors)
    if kernels.enabled(y):
        o2, p2 = kernels.directed_terms(y, pieces.members, pieces.sizes, pieces.coefficients, NEAR_PIECE)
        return alpha_beta(o2, p2, n_alpha, n_beta)
    means, bases = build_means_and_bases(y, pieces.members, pieces.sizes, pieces.coefficients, True)
    o2, p2, v2 = _directed_terms(y, y, means, bases)
    directed = alpha_beta(o2, p2, n_alpha, n_beta)
    near = (o2 <= NEAR_PIECE * v2).nonzero()
    step = max(1, (1 << 22) // (y.shape[1] * (bases.shape[2] + 3)))  # pairs re-scored at once
    for start in range(0, len(near), step):
        i, j = near[start:start + step, 0], near[start:start + step, 1]
        directed[i, j] = paired_directed_similarity(y[i], y[j], means[j], bases[j], n_alpha, n_beta)
    return directed


def normalize_similarity(s: Tensor, how: str = "none") -> Tensor:
    """Map a batch similarity onto [0, 1] row by row, then symmetrise (mean of both directions).

    Args:
        s: (N, N) symmetric similarities, diagonal 1.
        how: ``none`` (returned as is), ``row_max`` (each row over its largest off-diagonal value),
            ``row_minmax`` (each row's off-diagonal values stretched to [0, 1]) or ``row_rank``
            (each off-diagonal value → its rank among the row's N − 1 off-diagonal values, over
            N − 2: 0 for the least similar, 1 for the most similar; ties get their mean rank).

    Returns:
        (N, N) symmetric, diagonal 1, values in [0, 1].
    """
    if how == "none":
        return s
    n = s.shape[0]
    if n < 3:
        return s
    eye = torch.eye(n, dtype=torch.bool, device=s.device)
    tiny = torch.finfo(s.dtype).tiny
    if how == "row_max":
        top = s.masked_fill(eye, float("-inf")).amax(1, keepdim=True)
        out = (s / top.clamp(min=tiny)).clamp(max=1.0)
    elif how == "row_minmax":
        top = s.masked_fill(eye, float("-inf")).amax(1, keepdim=True)
        low = s.masked_fill(eye, float("inf")).amin(1, keepdim=True)
        span = top - low
        out = torch.where(span > 0, (s - low) / span.clamp(min=tiny), torch.ones_like(s)).clamp(0.0, 1.0)
    elif how == "row_rank":
        off = s.masked_fill(eye, float("-inf"))
        below = (off[:, None, :] < off[:, :, None]).sum(2).to(s.dtype)  # off-diagonal values below s_ij
        ties = (off[:, None, :] == off[:, :, None]).sum(2).to(s.dtype)  # including s_ij itself
        below = below - 1.0  # the diagonal's −inf is below every value
        out = (below + 0.5 * (ties - 1.0)) / (n - 2)
    else:
        raise ValueError(f"unknown normalization {how!r}")
    out = 0.5 * (out + out.T)
    return out.masked_fill(eye, 1.0)


def similarity_matrix(x: Tensor, config: ManifoldConfig = ManifoldConfig()) -> Tensor:
    """Fit the PL model to a batch and return its (N, N) similarity (the per-step entry point).

    ``config.normalization`` is applied here (and only here: the dataset-scale functions return
    the formula's values).

    Args:
        x: (N, d) teacher embeddings of the batch (gradient never flows).
        config: the PL options.

    Returns:
        (N, N) symmetric similarities in [0, 1], diagonal 1, never NaN.
    """
    with torch.no_grad():
        return normalize_similarity(_pieces_similarity(fit_pieces(x, config), config), config.normalization)


@torch.no_grad()
def pair_similarity(pieces: Pieces, rows: Tensor, cols: Tensor, config: ManifoldConfig = ManifoldConfig(),
                    block_size: int = 4096) -> Tensor:
    """Symmetrised PL similarity of arbitrary pairs (rows[q], cols[q]), in blocks of pairs.

    Args:
        pieces: pieces fitted on N points (their ``anchors`` are the points).
        rows: (Q,) point indices.
        cols: (Q,) point indices.
        config: the PL options.
        block_size: pairs per block (memory ≈ block_size × d × (m + 2) floats).

    Returns:
        (Q,) similarities in (0, 1]; 1 where rows[q] == cols[q].
    """
    rows = torch.as_tensor(rows, dtype=torch.long, device=pieces.anchors.device).reshape(-1)
    cols = torch.as_tensor(cols, dtype=torch.long, device=pieces.anchors.device).reshape(-1)
    if rows.shape != cols.shape:
        raise ValueError(f"rows and cols must have the same length, got {rows.numel()} and {cols.numel()}")
    n = len(pieces)
    if rows.numel() and (min(rows.min(), cols.min()) < 0 or max(rows.max(), cols.max()) >= n):
        raise ValueError(f"pair indices must be in [0, {n - 1}]")
    x = pieces.anchors
    out = torch.empty(rows.numel(), dtype=x.dtype, device=x.device)
    for start in range(0, rows.numel(), block_size):
        i, j = rows[start:start + block_size], cols[start:start + block_size]
        ij = paired_directed_similarity(x[i], x[j], pieces.means[j], pieces.bases[j], config.n_alpha, config.n_beta)
        ji = paired_directed_similarity(x[j], x[i], pieces.means[i], pieces.bases[i], config.n_alpha, config.n_beta)
        s = _symmetrize(ij, ji, config.symmetrize)
        out[start:start + block_size] = torch.where(i == j, torch.ones_like(s), s)
    return out


@torch.no_grad()
def neighbor_similarity(pieces: Pieces, neighbors: Tensor, config: ManifoldConfig = ManifoldConfig(),
                        block_size: int = 256) -> Tensor:
    """Symmetrised PL similarity of every point with each of its listed neighbours.

    Structured like the k-NN table, so both directions are batched matrix products: the neighbours
    of i against piece i, and i against each neighbour's piece (memory ≈ block_size × K × (m+2) × d).

    Args:
        pieces: pieces fitted on N points.
        neighbors: (N, K) indices (-1 = none).
        config: the PL options.
        block_size: anchors per block.

    Returns:
        (N, K) similarities in (0, 1] (0 where the index is -1, 1 where it is the point itself).
    """
    x, means, bases = pieces.anchors, pieces.means, pieces.bases
    n, k = neighbors.shape
    if n != len(pieces):
        raise ValueError(f"neighbors has {n} rows for {len(pieces)} pieces")
    neighbors = neighbors.to(device=x.device, dtype=torch.long)
    basis_t = bases.transpose(1, 2).contiguous()  # (N, m, d): gathers give (b, K, m, d) rows
    off = means - x
    e = torch.einsum("nd,ndk->nk", off, bases)  # Uᵀ(μ − a)
    r2 = ((off * off).sum(1) - (e * e).sum(1)).clamp(min=0)
    out = torch.zeros(n, k, dtype=x.dtype, device=x.device)
    for start in range(0, n, block_size):
        stop = min(n, start + block_size)
        nb = neighbors[start:stop]
        valid = nb >= 0
        j = nb.clamp(min=0)
        xi = x[start:stop]  # (b, d)
        xj = x[j]  # (b, K, d)
        # s′(x_j, P_i): neighbours against the anchor's piece
        diff_a = xj - means[start:stop, None, :]  # (b, K, d)
        c_a = diff_a @ bases[start:stop]  # (b, K, m)
        o_a = (diff_a * diff_a).sum(2) - (c_a * c_a).sum(2)
        p_a = r2[start:stop, None] + ((e[start:stop, None, :] + c_a) ** 2).sum(2)
        s_a = alpha_beta(o_a, p_a, config.n_alpha, config.n_beta)
        # s′(x_i, P_j): the anchor against each neighbour's piece
        diff_b = xi[:, None, :] - means[j]  # (b, K, d)
        c_b = (basis_t[j] @ diff_b[:, :, :, None]).squeeze(3)  # (b, K, m)
        o_b = (diff_b * diff_b).sum(2) - (c_b * c_b).sum(2)
        p_b = r2[j] + ((e[j] + c_b) ** 2).sum(2)
        s_b = alpha_beta(o_b, p_b, config.n_alpha, config.n_beta)
        s = _symmetrize(s_a, s_b, config.symmetrize)
        rows = torch.arange(start, stop, device=x.device)[:, None]
        s = torch.where(nb == rows, torch.ones_like(s), s)
        out[start:stop] = torch.where(valid, s, torch.zeros_like(s))
    return out


@overload
def sparse_similarity(x: Tensor, config: ManifoldConfig = ..., k: Optional[int] = ...,
                      neighbors: Optional[Tensor] = ..., approximate: bool = ...,
                      return_pieces: Literal[False] = ...) -> tuple[Tensor, Tensor]: ...


@overload
def sparse_similarity(x: Tensor, config: ManifoldConfig = ..., k: Optional[int] = ...,
                      neighbors: Optional[Tensor] = ..., approximate: bool = ..., *,
                      return_pieces: Literal[True]) -> tuple[Tensor, Tensor, Pieces]: ...


@torch.no_grad()
def sparse_similarity(x: Tensor, config: ManifoldConfig = ManifoldConfig(), k: Optional[int] = None,
                      neighbors: Optional[Tensor] = None, approximate: bool = False,
                      return_pieces: bool = False) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Pieces]:
    """Dataset-scale PL similarity: each point's ``k`` most similar among its nearest neighbours.

    Candidates come from a blockwise k-NN search (bounded memory; see
    :func:`plm.neighbors.candidates.knn_candidates`), the pieces from the nearest
    ``config.max_candidates`` of them, and s is evaluated on the ``k`` nearest neighbours of each
    point, then sorted by similarity.

    Args:
        x: (N, d) points.
        config: the PL options.
        k: neighbours scored per point (default: ``config.max_candidates`` or 16).
        neighbors: optional precomputed (N, ≥max(k, K_c)) neighbour indices, nearest first.
        approximate: approximate (faiss IVF) k-NN search when ``neighbors`` is None.
        return_pieces: also return the fitted pieces.

    Returns:
        ``(values, indices)``, each (N, k), values descending, in (0, 1]; with
        ``return_pieces`` a third item, the :class:`Pieces`.
    """
    check_points(x)
    n = x.shape[0]
    kc = config.max_candidates or 16
    k = k or kc
    need = min(max(k, kc), n - 1)
    if need < 1:
        raise ValueError(f"need at least 2 points, got {n}")
    k = min(k, n - 1)
    xp = prepare(x, config)
    if neighbors is None:
        neighbors = knn_candidates(xp, need, approximate=approximate)[1]
    elif neighbors.ndim != 2 or neighbors.shape[0] != n or neighbors.shape[1] < k:
        raise ValueError(f"neighbors must be (N={n}, >= {k}), got {tuple(neighbors.shape)}")
    neighbors = neighbors.to(device=x.device, dtype=torch.long)
    pieces = fit_pieces(xp, ManifoldConfig(**{**config.to_dict(), "normalize_inputs": False}),
                        candidates=neighbors[:, :kc])
    cols = neighbors[:, :k]
    values = neighbor_similarity(pieces, cols, config)
    values, order = torch.sort(values, dim=1, descending=True, stable=True)
    indices = cols.gather(1, order)
    return (values, indices, pieces) if return_pieces else (values, indices)
