"""Subset selection: which candidates join each anchor's neighbourhood S_i (docs/method.md §3).

All anchors advance together: the loop runs over the K candidate positions (set errors) or over
the joins (candidate criteria: one fit of the current members scores every remaining candidate),
never over points. Each step needs only the (K+1)×(K+1) Gram matrix of the anchor's candidates
relative to the anchor (float64), so the work per anchor is a handful of small batched
eigen-decompositions.

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

import torch
from torch import Tensor

from plm.manifold.config import ManifoldConfig

REL_TOL = 1e-6  # eigenvalues below this share of the set's variance count as zero
ERR_SLACK = 1e-6  # rounding slack on the fit-error test (an exact fit must not fail ε = 0 by rounding)


def centered_gram(gram: Tensor, w: Tensor) -> Tensor:
    """Gram matrix of the members (w = 1) centred on their mean; other rows and columns zero (float64)."""
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
    gc = centered_gram(gram, w)
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


def select_members(gram: Tensor, valid: Tensor, config: ManifoldConfig) -> Tensor:
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
    """:func:`select_members` for the candidate criteria, looping over joins instead of candidates.

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
        if relative:  # no distance scale when the nearest candidate coincides with the anchor: reject
            r = radius[active, None]
            res = torch.where(r > 0, res / r.clamp(min=torch.finfo(res.dtype).tiny), torch.full_like(res, float("inf")))
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
    keep = lam > REL_TOL * scale
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
