"""Subset selection and local PCA: one linear piece per point, batched over all anchors.

For anchor i with candidates c_1..c_K (its nearest other points, nearest first), the selected
neighbourhood starts as S_i = {i}; candidate c_t joins when the m-dimensional PCA fit of
S_i ∪ {c_t} has a scale-free error ≤ ε (docs/method.md §3). All anchors advance together: the loop runs
over the K candidate positions, never over points. Each step needs only the (K+1)×(K+1) Gram matrix
of the anchor's candidates, so the work per anchor is a handful of tiny batched eigen-decompositions.

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

from typing import Optional

import torch
from torch import Tensor

from plm.manifold.config import ManifoldConfig, Pieces
from plm.manifold.neighbors import knn_candidates

DENSE_MAX = 4096  # up to this many points, candidate distances are computed in float64
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
def fit_pieces(x: Tensor, config: ManifoldConfig = ManifoldConfig(), candidates: Optional[Tensor] = None,
               block_size: int = 512) -> Pieces:
    """Subset selection + local PCA for every point (no gradient).

    Args:
        x: (N, d) points (teacher embeddings).
        config: the PL options.
        candidates: optional (N, K) neighbour indices, nearest first (-1 = none); by default the
            ``config.max_candidates`` nearest other points (exact).
        block_size: anchors processed together (memory ≈ block_size × (K+1) × d floats).

    Returns:
        the fitted :class:`Pieces`.

    Raises:
        ValueError: bad shapes, NaN or inf values, or out-of-range candidate indices.
    """
    x = prepare(x, config)
    n, d = x.shape
    m = config.piece_dim
    if candidates is None:
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
    for start in range(0, n, block_size):
        stop = min(n, start + block_size)
        anchors = torch.arange(start, stop, device=x.device)
        idx = torch.cat([anchors[:, None], candidates[start:stop]], dim=1)  # (b, K+1)
        valid = idx >= 0
        pts = x[idx.clamp(min=0)]  # (b, K+1, d)
        z = pts - pts[:, :1]  # relative to the anchor
        gram = (z @ z.transpose(1, 2)).double()
        mask = _select(gram, valid, config)
        mu, basis, rank = _local_pca(pts[:, 0], z, gram, mask, m)
        del pts
        means[start:stop] = mu
        bases[start:stop] = basis
        ranks[start:stop] = rank
        sizes[start:stop] = mask.sum(1)
        # accepted indices first, in candidate order
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
        members[start:stop] = torch.where(mask.gather(1, order), idx.gather(1, order), torch.full_like(idx, -1))
    return Pieces(anchors=x, means=means, bases=bases, members=members, sizes=sizes, ranks=ranks)


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

    At step t only the first t+1 slots can hold members, so the eigen-decompositions work on the
    leading (t+1)×(t+1) block. A set of at most m+1 points fits an m-dim subspace exactly (error 0),
    so the first m valid candidates always join.
    """
    mask = torch.zeros_like(valid)
    mask[:, 0] = True
    if not config.subset_selection:
        return mask | valid
    m = config.piece_dim
    anchor_dist = torch.diagonal(gram, dim1=1, dim2=2).clamp(min=0).sqrt()
    candidate_test = config.criterion in ("candidate_residual", "relative_candidate_residual")
    free = 1 if candidate_test else m  # candidates that join without a test
    radius = _nearest_valid_distance(anchor_dist, valid)
    w = mask.to(gram.dtype)
    growing = torch.ones_like(valid[:, 0])
    for t in range(1, gram.shape[1]):
        if t <= free:
            accept = valid[:, t]
        elif candidate_test:
            res = candidate_residual(gram[:, :t + 1, :t + 1], w[:, :t + 1], m)
            if config.criterion == "relative_candidate_residual":
                res = res / radius.clamp(min=torch.finfo(res.dtype).tiny)
            accept = valid[:, t] & (res <= config.eps + ERR_SLACK)
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


def _nearest_valid_distance(anchor_dist: Tensor, valid: Tensor) -> Tensor:
    """(b,) the distance from each anchor to its nearest valid candidate (inf when it has none)."""
    d = torch.where(valid[:, 1:], anchor_dist[:, 1:], torch.full_like(anchor_dist[:, 1:], float("inf")))
    return d.amin(1) if d.shape[1] else anchor_dist.new_full((anchor_dist.shape[0],), float("inf"))


def candidate_residual(gram: Tensor, w: Tensor, m: int) -> Tensor:
    """Orthogonal distance of the last point to the piece of the current members.

    The piece is the members' mean plus their top-min(m, rank) principal directions; the last
    column of ``gram`` is the candidate, which is not a member.

    Args:
        gram: (b, n, n) Gram matrices relative to the anchor (float64), candidate last.
        w: (b, n) member indicator (the candidate's entry is ignored).
        m: piece dimension.
    """
    w = w.clone()
    w[:, -1] = 0.0
    count = w.sum(1).clamp(min=1)[:, None]
    row = (gram * w[:, None, :]).sum(2) / count  # z_k · z̄ for every k, candidate included
    total = (row * w).sum(1, keepdim=True) / count  # ||z̄||²
    full = gram - row[:, :, None] - row[:, None, :] + total[:, :, None]  # (z_a − z̄)·(z_b − z̄)
    gc = full * w[:, :, None] * w[:, None, :]
    lam, vec = torch.linalg.eigh(gc)  # ascending
    lam, vec = lam[:, -m:], vec[:, :, -m:]
    scale = torch.diagonal(gc, dim1=1, dim2=2).sum(1, keepdim=True)
    keep = lam > _REL_TOL * scale
    cross = torch.einsum("bn,bnk->bk", full[:, -1, :] * w, vec)  # (c − z̄)·(z_a − z̄) along each direction
    proj2 = torch.where(keep, cross ** 2 / lam.clamp(min=torch.finfo(lam.dtype).tiny), torch.zeros_like(lam)).sum(1)
    return (full[:, -1, -1] - proj2).clamp(min=0).sqrt()


def _local_pca(anchor: Tensor, z: Tensor, gram: Tensor, mask: Tensor, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, orthonormal top-m basis (zero columns past the set's rank) and rank of each member set.

    Args:
        anchor: (b, d) the anchors.
        z: (b, n, d) the candidates relative to their anchor (anchor first, so z[:, 0] = 0).
        gram: (b, n, n) float64 Gram matrix of ``z``.
        mask: (b, n) members.
        m: piece dimension.
    """
    b, n, d = z.shape
    w = mask.to(gram.dtype)
    wz = mask.to(z.dtype)
    mu = anchor + (z * wz[:, :, None]).sum(1) / wz.sum(1, keepdim=True)
    gc = _centered_gram(gram, w)
    lam, vec = torch.linalg.eigh(gc)  # ascending
    lam, vec = lam.flip(1)[:, :m], vec.flip(2)[:, :, :m]
    if lam.shape[1] < m:  # fewer candidate slots than m
        pad = m - lam.shape[1]
        lam = torch.cat([lam, lam.new_zeros(b, pad)], 1)
        vec = torch.cat([vec, vec.new_zeros(b, n, pad)], 2)
    total = torch.diagonal(gc, dim1=1, dim2=2).sum(1, keepdim=True)
    scale = torch.diagonal(gram, dim1=1, dim2=2).amax(1, keepdim=True)
    good = (lam > _REL_TOL * total) & (lam > 1e3 * torch.finfo(z.dtype).eps * scale)
    # eigenvectors of non-zero eigenvalues vanish off the members and sum to zero over them, so
    # zᵀv equals the centred members' (z − z̄)ᵀv without centring z
    raw = z.transpose(1, 2) @ (vec * w[:, :, None]).to(z.dtype)  # (b, d, m), column norms ≈ sqrt(λ)
    basis = torch.zeros_like(raw)
    for j in range(m):  # Gram-Schmidt keeps the columns orthonormal to working precision
        col = raw[:, :, j]
        if j:
            col = col - (basis[:, :, :j] @ (basis[:, :, :j].transpose(1, 2) @ col[:, :, None])).squeeze(2)
        norm = col.norm(dim=1, keepdim=True)
        ok = good[:, j:j + 1] & (norm > 0)
        basis[:, :, j] = torch.where(ok, col / norm.clamp(min=torch.finfo(z.dtype).tiny), torch.zeros_like(col))
    rank = (basis.abs().sum(1) > 0).sum(1)
    return mu, basis, rank
