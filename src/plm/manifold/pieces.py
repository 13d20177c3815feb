"""Subset selection and local PCA: one linear piece per point, batched over all anchors.

For anchor i with candidates c_1..c_K (its nearest other points, nearest first), the selected
neighbourhood starts as S_i = {i}; candidate c_t joins when the m-dimensional PCA fit of
S_i ∪ {c_t} has a scale-free error ≤ ε (docs/method.md §3). All anchors advance together: the loop runs
over the K candidate positions (set errors) or over the joins (candidate criteria: one fit of the
current members scores every remaining candidate), never over points. Each step needs only the
(K+1)×(K+1) Gram matrix of the anchor's candidates, so the work per anchor is a handful of small
batched eigen-decompositions. Up to :data:`GLOBAL_GRAM_MAX` points these Gram matrices are read off
one float64 Gram matrix of all points, so no (anchors, K+1, d) tensor is built.

Set errors (both in [0, 1], invariant to scale, rotation and translation), computed on the grown
set S_i ∪ {c_t}:

- ``residual_variance``: share of the set's total variance outside its top-m principal directions,
  (Σ_{k>m} λ_k) / (Σ_k λ_k) with λ the PCA eigenvalues of the set.
- ``relative_residual``: mean over the set of each point's orthogonal distance to the fitted
  m-dim affine subspace, divided by the mean distance of the other members to the anchor.

Both *fall* when a far point joins (it dominates the set's variance), so they accept far
candidates. The candidate criteria judge the candidate against the piece fitted to the current
set S_i (its mean and top-min(m, |S_i|−1) principal directions), before it joins:

- ``candidate_residual``: the candidate's orthogonal distance to that piece (absolute; on
  unit-norm inputs a chord length in [0, 2]);
- ``relative_candidate_residual``: the same distance over the anchor's nearest-candidate distance.

With the candidate criteria the nearest candidate always joins (so every piece is at least a
line); with the set errors the first m do (a set of ≤ m+1 points fits exactly). ``on_breach``
``"stop"`` ends the growth at the first rejection instead of skipping to the next candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor

from plm.manifold.config import ManifoldConfig, Pieces
from plm.manifold.neighbors import knn_candidates

DENSE_MAX = 4096  # up to this many points, candidate distances are computed in float64
GLOBAL_GRAM_MAX = 1024  # up to this many points, the pieces come from one float64 Gram matrix of all points
_REL_TOL = 1e-6  # eigenvalues below this share of the set's variance count as zero
ERR_SLACK = 1e-6  # rounding slack on the fit-error test (an exact fit must not fail ε = 0 by rounding)


def check_points(x: Tensor, name: str = "x") -> None:
    """Raise ValueError unless ``x`` is a finite floating-point (N, d) tensor."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, d), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values; clean the input first")


def prepare(x: Tensor, config: ManifoldConfig) -> Tensor:
    """Validate the points and apply the config's input normalisation (detached)."""
    check_points(x)
    x = x.detach()
    if config.normalize_inputs:
        x = torch.nn.functional.normalize(x, dim=1)
    return x


@torch.no_grad()
def nearest_candidates(x: Tensor, k: int, block_size: int = 2048) -> Tensor:
    """(N, k) indices of each point's ``k`` nearest other points, nearest first (exact, ties by index).

    Both go through :func:`plm.manifold.neighbors.knn_candidates` (the project's one exact k-NN);
    up to :data:`DENSE_MAX` points the distances are computed in float64, so orderings are exact.
    """
    if x.shape[0] <= DENSE_MAX:
        x = x.double()
    return knn_candidates(x, k, approximate=False, block_size=block_size)[1]


@torch.no_grad()
def group_candidates(x: Tensor, group_size: int) -> Tensor:
    """(N, g−1) indices of the other points of each point's group, nearest first (ties by index).

    The points come in consecutive groups of ``group_size`` = g (rows g·q … g·q + g − 1).

    Raises:
        ValueError: N is not a multiple of g.
    """
    n, g = x.shape[0], group_size
    if n % g:
        raise ValueError(f"group_size {g} must divide the number of points, got {n}")
    xs = x.double().reshape(n // g, g, -1)
    dist = torch.cdist(xs, xs) + torch.diag(torch.full((g,), float("inf"), dtype=torch.float64, device=x.device))
    order = torch.sort(dist, dim=2, stable=True).indices[:, :, :g - 1]
    return (order + torch.arange(0, n, g, device=x.device)[:, None, None]).reshape(n, g - 1)


@torch.no_grad()
def fit_pieces(x: Tensor, config: ManifoldConfig = ManifoldConfig(), candidates: Optional[Tensor] = None,
               block_size: int = 512) -> Pieces:
    """Subset selection + local PCA for every point (no gradient).

    Args:
        x: (N, d) points (teacher embeddings).
        config: the PL options.
        candidates: optional (N, K) neighbour indices, nearest first (-1 = none); by default the
            ``config.max_candidates`` nearest other points (exact), of the anchor's group with
            ``config.group_size``.
        block_size: anchors processed together (memory ≈ block_size × (K+1) × max(K+1, d) floats).

    Returns:
        the fitted :class:`Pieces`.

    Raises:
        ValueError: bad shapes, NaN or inf values, out-of-range candidate indices, or both
            ``candidates`` and ``config.group_size``.
    """
    x = prepare(x, config)
    n, d = x.shape
    m = config.piece_dim
    if candidates is not None and config.group_size is not None:
        raise ValueError("pass either candidates or a config with group_size, not both")
    if candidates is None and config.group_size is not None:
        candidates = group_candidates(x, config.group_size)
        if config.max_candidates is not None:
            candidates = candidates[:, :config.max_candidates]
    elif candidates is None:
        k = n - 1 if config.max_candidates is None else min(config.max_candidates, n - 1)
        candidates = nearest_candidates(x, k) if k > 0 else torch.empty(n, 0, dtype=torch.long, device=x.device)
    else:
        candidates = _check_candidates(candidates, n, x.device)
        if config.max_candidates is not None:
            candidates = candidates[:, :config.max_candidates]
    k = candidates.shape[1]
    means = torch.empty_like(x)
    bases = torch.zeros(n, d, m, dtype=x.dtype, device=x.device)
    members = torch.full((n, k + 1), -1, dtype=torch.long, device=x.device)
    sizes = torch.empty(n, dtype=torch.long, device=x.device)
    ranks = torch.empty(n, dtype=torch.long, device=x.device)
    x64 = x.double() if n <= GLOBAL_GRAM_MAX else None
    gram_all = None if x64 is None else x64 @ x64.T
    for start in range(0, n, block_size):
        stop = min(n, start + block_size)
        anchors = torch.arange(start, stop, device=x.device)
        idx = torch.cat([anchors[:, None], candidates[start:stop]], dim=1)  # (b, K+1)
        valid = idx >= 0
        safe = idx.clamp(min=0)
        z = None
        if gram_all is not None:
            gram = _gram_from_global(gram_all, safe)
        else:
            z = x[safe] - x[anchors][:, None, :]  # (b, K+1, d) relative to the anchor
            gram = (z @ z.transpose(1, 2)).double()
        mask = _select(gram, valid, config)
        # members first (anchor in column 0, then candidate order); the PCA sees the members only
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
        members[start:stop] = torch.where(mask.gather(1, order), idx.gather(1, order), torch.full_like(idx, -1))
        keep = order[:, :int(mask.sum(1).max())]
        size = keep.shape[1]
        gram = gram.gather(1, keep[:, :, None].expand(-1, -1, gram.shape[2]))
        gram = gram.gather(2, keep[:, None, :].expand(-1, size, -1))
        if x64 is not None:
            combine = _global_combiner(x64, safe.gather(1, keep), x.dtype)
        else:
            assert z is not None
            combine = _gathered_combiner(z.gather(1, keep[:, :, None].expand(-1, -1, d)))
        mu, basis, rank = _local_pca(x[anchors], combine, gram, mask.gather(1, keep), m)
        means[start:stop] = mu
        bases[start:stop] = basis
        ranks[start:stop] = rank
        sizes[start:stop] = mask.sum(1)
    return Pieces(anchors=x, means=means, bases=bases, members=members, sizes=sizes, ranks=ranks)


Combiner = Callable[[Tensor], Tensor]


def _gram_from_global(gram_all: Tensor, idx: Tensor) -> Tensor:
    """(b, n, n) Gram matrices relative to each row's first point, from the points' global Gram matrix:
    (x_a − x_i)·(x_c − x_i) = x_a·x_c − x_a·x_i − x_i·x_c + x_i·x_i (float64)."""
    g = gram_all[idx[:, :, None], idx[:, None, :]]
    g_anchor = g[:, :, :1]
    return g - g_anchor - g_anchor.transpose(1, 2) + g[:, :1, :1]


def _gathered_combiner(z: Tensor) -> Combiner:
    """Σ_k c_k z_k for gathered (b, n, d) points ``z`` relative to their anchor: (b, n, r) → (b, d, r)."""
    return lambda coeffs: z.transpose(1, 2) @ coeffs.to(z.dtype)


def _global_combiner(x64: Tensor, idx: Tensor, dtype: torch.dtype) -> Combiner:
    """As :func:`_gathered_combiner` without gathering the points: the coefficients are scattered to the
    points' global rows, Σ_k c_k (x_k − x_i) = Xᵀc − (Σ_k c_k) x_i, in float64."""
    def combine(coeffs: Tensor) -> Tensor:
        b, n, r = coeffs.shape
        c = coeffs.double()
        spread = c.new_zeros(b, x64.shape[0], r).scatter_add_(1, idx[:, :, None].expand(b, n, r), c)
        out = torch.einsum("nd,bnr->bdr", x64, spread) - x64[idx[:, 0]][:, :, None] * c.sum(1)[:, None, :]
        return out.to(dtype)
    return combine


def _check_candidates(candidates: Tensor, n: int, device: torch.device) -> Tensor:
    if not isinstance(candidates, Tensor) or candidates.ndim != 2 or candidates.shape[0] != n:
        shape = tuple(candidates.shape) if isinstance(candidates, Tensor) else type(candidates).__name__
        raise ValueError(f"candidates must be an (N={n}, K) index tensor, got {shape}")
    if candidates.is_floating_point():
        raise ValueError("candidates must hold integer indices")
    candidates = candidates.to(device=device, dtype=torch.long)
    if candidates.numel() and (candidates.max() >= n or candidates.min() < -1):
        raise ValueError(f"candidate indices must be in [0, {n - 1}] (or -1 for none)")
    rows = torch.arange(n, device=device)[:, None]
    return torch.where(candidates == rows, torch.full_like(candidates, -1), candidates)


def _centered_gram(gram: Tensor, w: Tensor) -> Tensor:
    """Gram matrix of the members (w = 1) centred on their mean; other rows and columns zero."""
    count = w.sum(1).clamp(min=1)[:, None]
    row = (gram * w[:, None, :]).sum(2) / count  # z_k · z̄
    total = (row * w).sum(1, keepdim=True) / count  # ||z̄||²
    gc = gram - row[:, :, None] - row[:, None, :] + total[:, :, None]
    return gc * w[:, :, None] * w[:, None, :]


def fit_error(gram: Tensor, w: Tensor, m: int, criterion: str, anchor_dist: Tensor) -> Tensor:
    """Scale-free m-dim PCA fit error of each member set (see the module docstring).

    Args:
        gram: (b, n, n) Gram matrices of the points relative to the anchor (float64).
        w: (b, n) member indicator (float64), anchor in column 0.
        m: piece dimension.
        criterion: ``residual_variance`` or ``relative_residual``.
        anchor_dist: (b, n) distances of the points to the anchor.
    """
    gc = _centered_gram(gram, w)
    if criterion == "residual_variance":
        lam = torch.linalg.eigvalsh(gc).clamp(min=0)  # ascending
        total = lam.sum(1)
        top = lam[:, -m:].sum(1)
        err = (total - top).clamp(min=0) / total.clamp(min=torch.finfo(gc.dtype).tiny)
        return torch.where(total > 0, err, torch.zeros_like(err))
    lam, vec = torch.linalg.eigh(gc)
    lam = lam.clamp(min=0)
    proj = (vec[:, :, -m:] ** 2 * lam[:, None, -m:]).sum(2)  # squared length of each point's projection
    res = (torch.diagonal(gc, dim1=1, dim2=2) - proj).clamp(min=0).sqrt() * w
    count = w.sum(1)
    mean_res = res.sum(1) / count.clamp(min=1)
    others = (count - 1).clamp(min=1)
    mean_dist = (anchor_dist * w)[:, 1:].sum(1) / others
    err = mean_res / mean_dist.clamp(min=torch.finfo(gc.dtype).tiny)
    return torch.where(mean_dist > 0, err, torch.zeros_like(err))


def _select(gram: Tensor, valid: Tensor, config: ManifoldConfig) -> Tensor:
    """(b, K+1) bool: the members of each anchor's selected neighbourhood (anchor = column 0).

    For the set errors, step t tests candidate t on the leading (t+1)×(t+1) block. A set of at
    most m+1 points fits an m-dim subspace exactly (error 0), so the first m valid candidates
    always join. The candidate criteria go through :func:`_select_by_candidate`.
    """
    mask = torch.zeros_like(valid)
    mask[:, 0] = True
    if not config.subset_selection:
        return mask | valid
    anchor_dist = torch.diagonal(gram, dim1=1, dim2=2).clamp(min=0).sqrt()
    if config.criterion in ("candidate_residual", "relative_candidate_residual"):
        return _select_by_candidate(gram, valid, anchor_dist, config)
    m = config.piece_dim
    w = mask.to(gram.dtype)
    growing = torch.ones_like(valid[:, 0])
    for t in range(1, gram.shape[1]):
        if t <= m:
            accept = valid[:, t]
        else:
            trial = w[:, :t + 1].clone()
            trial[:, t] = 1.0
            err = fit_error(gram[:, :t + 1, :t + 1], trial, m, config.criterion, anchor_dist[:, :t + 1])
            accept = valid[:, t] & (err <= config.eps + ERR_SLACK)
        if config.on_breach == "stop":
            growing = growing & (accept | ~valid[:, t])  # an empty slot is no breach
            accept = accept & growing
        w[:, t] = accept.to(w.dtype)
    return w > 0.5


def _select_by_candidate(gram: Tensor, valid: Tensor, anchor_dist: Tensor, config: ManifoldConfig) -> Tensor:
    """:func:`_select` for the candidate criteria, looping over joins instead of candidates.

    Between two joins the piece does not change, so one fit of the current members scores every
    remaining candidate at once: the next member is the first later candidate within ε (``skip``),
    or the next valid candidate if it is within ε (``stop``). The loop runs max |S_i| times,
    each on the anchors still growing, with eigen-decompositions of the members' size only. It
    gives the members of the candidate-by-candidate loop (same piece, same test).
    """
    b, n = valid.shape
    mask = torch.zeros_like(valid)
    mask[:, 0] = True
    if n == 1:
        return mask
    mask[:, 1] = valid[:, 1]  # the nearest candidate joins untested
    last = torch.ones(b, dtype=torch.long, device=valid.device)  # the last candidate considered
    radius = _nearest_valid_distance(anchor_dist, valid)
    relative = config.criterion == "relative_candidate_residual"
    positions = torch.arange(n, device=valid.device)
    active = torch.arange(b, device=valid.device)
    while active.numel():
        members = mask[active]
        later = valid[active] & (positions[None, :] > last[active, None])
        keep_rows = later.any(1)
        active, members, later = active[keep_rows], members[keep_rows], later[keep_rows]
        if not active.numel():
            break
        res = _residuals_to_piece(gram[active], members, config.piece_dim)
        if relative:
            res = res / radius[active, None].clamp(min=torch.finfo(res.dtype).tiny)
        fits = later & (res <= config.eps + ERR_SLACK)
        if config.on_breach == "stop":
            nxt = _first_true(later)
            joins = fits.gather(1, nxt[:, None]).squeeze(1)
        else:
            joins = fits.any(1)
            nxt = _first_true(fits)
        active, nxt = active[joins], nxt[joins]
        mask[active, nxt] = True
        last[active] = nxt
    return mask


def _first_true(flags: Tensor) -> Tensor:
    """(b,) the first column where each row of ``flags`` is true (rows must have one)."""
    n = flags.shape[1]
    pos = torch.arange(n, device=flags.device).expand_as(flags)
    return torch.where(flags, pos, torch.full_like(pos, n)).amin(1)


def _residuals_to_piece(gram: Tensor, members: Tensor, m: int) -> Tensor:
    """(b, n) orthogonal distance of every point to the piece of the members (as
    :func:`candidate_residual`, for all points at once).

    Args:
        gram: (b, n, n) Gram matrices relative to the anchor (float64).
        members: (b, n) bool member indicator (at least one per row).
        m: piece dimension.
    """
    b, n, _ = gram.shape
    size = int(members.sum(1).max())
    slots = torch.sort((~members).to(torch.int8), dim=1, stable=True).indices[:, :size]  # members first
    w = members.gather(1, slots).to(gram.dtype)  # (b, S)
    count = w.sum(1, keepdim=True)
    g_all = gram.gather(2, slots[:, None, :].expand(b, n, size))  # (b, n, S): z_k · z_a
    row = (g_all * w[:, None, :]).sum(2) / count  # z_k · z̄
    g_mm = g_all.gather(1, slots[:, :, None].expand(b, size, size))
    row_m = row.gather(1, slots)
    total = (row_m * w).sum(1, keepdim=True) / count  # ||z̄||²
    gc = (g_mm - row_m[:, :, None] - row_m[:, None, :] + total[:, :, None]) * w[:, :, None] * w[:, None, :]
    lam, vec = torch.linalg.eigh(gc)  # ascending
    lam, vec = lam[:, -m:], vec[:, :, -m:]
    scale = torch.diagonal(gc, dim1=1, dim2=2).sum(1, keepdim=True)
    keep = lam > _REL_TOL * scale
    cross_all = (g_all - row[:, :, None] - row_m[:, None, :] + total[:, :, None]) * w[:, None, :]
    cross = cross_all @ vec  # (b, n, m): (z_k − z̄)·(z_a − z̄) along each direction
    proj2 = torch.where(keep[:, None, :], cross ** 2 / lam.clamp(min=torch.finfo(lam.dtype).tiny)[:, None, :],
                        torch.zeros_like(cross)).sum(2)
    diag = torch.diagonal(gram, dim1=1, dim2=2) - 2 * row + total
    return (diag - proj2).clamp(min=0).sqrt()


def _nearest_valid_distance(anchor_dist: Tensor, valid: Tensor) -> Tensor:
    """(b,) the distance from each anchor to its nearest valid candidate (inf when it has none)."""
    d = torch.where(valid[:, 1:], anchor_dist[:, 1:], torch.full_like(anchor_dist[:, 1:], float("inf")))
    return d.amin(1) if d.shape[1] else anchor_dist.new_full((anchor_dist.shape[0],), float("inf"))


def candidate_residual(gram: Tensor, w: Tensor, m: int) -> Tensor:
    """Orthogonal distance of the last point to the piece of the current members.

    The piece is the members' mean plus their top-min(m, rank) principal directions; the last
    column of ``gram`` is the candidate, which is not a member (:func:`_residuals_to_piece` for
    one candidate).

    Args:
        gram: (b, n, n) Gram matrices relative to the anchor (float64), candidate last.
        w: (b, n) member indicator, at least one member per row (the candidate's entry is ignored).
        m: piece dimension.
    """
    members = w > 0.5
    members[:, -1] = False
    return _residuals_to_piece(gram, members, m)[:, -1]


def _local_pca(anchor: Tensor, combine: Combiner, gram: Tensor, mask: Tensor,
               m: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, orthonormal top-m basis (zero columns past the set's rank) and rank of each member set.

    Args:
        anchor: (b, d) the anchors.
        combine: maps (b, n, r) coefficients c to Σ_k c_k z_k, (b, d, r), with z_k the k-th candidate
            relative to its anchor (anchor first, so z_0 = 0).
        gram: (b, n, n) float64 Gram matrix of the z.
        mask: (b, n) members.
        m: piece dimension.
    """
    b, n = mask.shape
    w = mask.to(gram.dtype)
    mu = anchor + combine((w / w.sum(1, keepdim=True))[:, :, None])[:, :, 0]
    gc = _centered_gram(gram, w)
    lam, vec = torch.linalg.eigh(gc)  # ascending
    lam, vec = lam.flip(1)[:, :m], vec.flip(2)[:, :, :m]
    if lam.shape[1] < m:  # fewer candidate slots than m
        pad = m - lam.shape[1]
        lam = torch.cat([lam, lam.new_zeros(b, pad)], 1)
        vec = torch.cat([vec, vec.new_zeros(b, n, pad)], 2)
    total = torch.diagonal(gc, dim1=1, dim2=2).sum(1, keepdim=True)
    scale = torch.diagonal(gram, dim1=1, dim2=2).amax(1, keepdim=True)
    good = (lam > _REL_TOL * total) & (lam > 1e3 * torch.finfo(anchor.dtype).eps * scale)
    # eigenvectors of non-zero eigenvalues vanish off the members and sum to zero over them, so
    # zᵀv equals the centred members' (z − z̄)ᵀv without centring z
    raw = combine(vec * w[:, :, None])  # (b, d, m), column norms ≈ sqrt(λ)
    basis = torch.zeros_like(raw)
    for j in range(m):  # Gram-Schmidt keeps the columns orthonormal to working precision
        col = raw[:, :, j]
        if j:
            col = col - (basis[:, :, :j] @ (basis[:, :, :j].transpose(1, 2) @ col[:, :, None])).squeeze(2)
        norm = col.norm(dim=1, keepdim=True)
        ok = good[:, j:j + 1] & (norm > 0)
        basis[:, :, j] = torch.where(ok, col / norm.clamp(min=torch.finfo(anchor.dtype).tiny), torch.zeros_like(col))
    rank = (basis.abs().sum(1) > 0).sum(1)
    return mu, basis, rank
