"""Linear pieces: candidates, subset selection and local PCA for every point, batched over anchors.

For anchor i with candidates c_1..c_K (its nearest other points, nearest first, or the other
members of its seed group), the selected neighbourhood S_i grows as :mod:`plm.manifold.selection`
decides; its piece is the mean of S_i and the top-m principal directions (docs/method.md §3).

Everything is computed from Gram matrices of the points relative to each anchor (float64), so a
piece is held as coefficients: U_i = Σ_k C_ik (x_k − x_i) over the members k of S_i, and
μ_i = the mean of S_i. Up to :data:`GLOBAL_GRAM_MAX` points these Gram matrices are read off one
float64 Gram matrix of all points, that of their coordinates in their own span (a QR
decomposition, :func:`batch_coordinates`; both kept in :class:`Pieces`, where
:mod:`plm.manifold.similarity` scores every pair in R^N instead of R^d), and the d-dimensional
means and bases are built only when read. Above it, each block of anchors gathers its candidates
and the pieces are built at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

import torch
from torch import Tensor

import plm.manifold.kernels as kernels
from plm.manifold.config import ManifoldConfig
from plm.manifold.selection import REL_TOL, centered_gram, select_members
from plm.neighbors.candidates import knn_candidates
from plm.neighbors.exact import smallest_k

DENSE_MAX = 4096  # up to this many points, candidate distances are computed in float64
GLOBAL_GRAM_MAX = 1024  # up to this many points, the pieces come from one float64 Gram matrix of all points
_BUILD_FLOATS = 2 ** 22  # anchors × members × d entries gathered at once when means and bases are built


@dataclass
class Pieces:
    """The linear pieces of N points (one per point), as fitted by :func:`plm.manifold.fit_pieces`.

    Attributes:
        anchors: (N, d) the points the pieces were grown around (after optional normalisation).
        members: (N, K) long, the indices of S_i (anchor first, then in candidate order), -1 padded.
        sizes: (N,) long, |S_i|.
        ranks: (N,) long, the number of non-zero columns of U_i.
        coefficients: (N, K, m) float64, U_i = Σ_k coefficients[i, k] · (x_{members[i, k]} − x_i)
            (zero in padded slots).
        gram: (N, N) float64 Gram matrix of the anchors when N ≤ :data:`GLOBAL_GRAM_MAX`, else ``None``.
        coordinates: (N, r) float64 coordinates of the anchors in their span, r = min(N, d)
            (:func:`batch_coordinates`; ``gram`` is their Gram matrix) when ``gram`` is kept, else ``None``.
        means: (N, d) μ_i, the mean of S_i (built on first use).
        bases: (N, d, m) orthonormal columns U_i; zero columns where S_i spans fewer than m dims
            (built on first use).
    """

    anchors: Tensor
    members: Tensor
    sizes: Tensor
    ranks: Tensor
    coefficients: Tensor
    gram: Optional[Tensor] = None
    coordinates: Optional[Tensor] = None
    _built: Optional[tuple[Tensor, Tensor]] = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.anchors.shape[0])

    @property
    def means(self) -> Tensor:
        """(N, d) μ_i."""
        return self._build()[0]

    @property
    def bases(self) -> Tensor:
        """(N, d, m) U_i."""
        return self._build()[1]

    def _build(self) -> tuple[Tensor, Tensor]:
        if self._built is None:
            self._built = build_means_and_bases(self.anchors, self.members, self.sizes, self.coefficients,
                                                self.gram is not None)
        return self._built

    def to(self, device: torch.device | str) -> Pieces:
        """The same pieces on another device."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.to(device)
            elif isinstance(value, tuple):
                moved[name] = tuple(v.to(device) for v in value)
        return Pieces(**moved)

    def groups(self) -> list[list[int]]:
        """Each point's selected neighbourhood S_i as a list of indices (anchor first)."""
        members = self.members.cpu().numpy()
        return [row[row >= 0].tolist() for row in members]


def check_points(x: Tensor, name: str = "x") -> None:
    """Raise ValueError unless ``x`` is a finite floating-point (N, d) tensor."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, d), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    # one reduction instead of an (N, d) mask: the largest |value| is NaN or inf iff some value is
    if x.numel() and not bool(torch.isfinite(x.abs().amax())):
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

    Both go through :func:`plm.neighbors.candidates.knn_candidates` (the project's one exact k-NN);
    up to :data:`DENSE_MAX` points the distances are computed in float64, so orderings are exact.
    """
    if x.shape[0] <= DENSE_MAX:
        x = x.double()
    return knn_candidates(x, k, approximate=False, block_size=block_size)[1]


@torch.no_grad()
def group_candidates(x: Tensor, group_size: int, gram: Optional[Tensor] = None,
                     representatives: Optional[Tensor] = None) -> Tensor:
    """(N, g−1) indices of the other points of each point's group, nearest first (ties by index).

    The points come in consecutive groups of ``group_size`` = g (rows g·q … g·q + g − 1). The
    distances are float64, from ``gram`` (the points' Gram matrix) when given; equal points
    (``representatives``, see :func:`duplicate_representatives`) tie exactly, at distance 0 from each other.

    Raises:
        ValueError: N is not a multiple of g.
    """
    n, g = x.shape[0], group_size
    if n % g:
        raise ValueError(f"group_size {g} must divide the number of points, got {n}")
    if gram is None:
        xs = x.double().reshape(n // g, g, -1)
        blocks = xs @ xs.transpose(1, 2)
    else:
        starts = torch.arange(0, n, g, device=x.device)[:, None] + torch.arange(g, device=x.device)
        blocks = gram[starts[:, :, None], starts[:, None, :]]  # (n/g, g, g)
    key = torch.diagonal(blocks, dim1=1, dim2=2)[:, None, :] - 2.0 * blocks  # ‖x_j‖² − 2 x_i·x_j
    if representatives is not None:
        rep = representatives.reshape(n // g, g)
        same = rep[:, :, None] == rep[:, None, :]  # (n/g, g, g) equal points
        first = same.to(torch.int8).argmax(2)  # the first position in the group of an equal point
        key = key.gather(2, first[:, None, :].expand(-1, g, -1))  # equal columns, equal keys
        key = key.masked_fill(same, float("-inf"))  # an equal point is the nearest
    key = key + torch.diag(torch.full((g,), float("inf"), dtype=key.dtype, device=x.device))
    order = torch.sort(key, dim=2, stable=True).indices[:, :, :g - 1]
    return (order + torch.arange(0, n, g, device=x.device)[:, None, None]).reshape(n, g - 1)


@torch.no_grad()
def duplicate_representatives(x: Tensor) -> Optional[Tensor]:
    """(N,) long: the lowest index of a point equal to each point, or ``None`` when all points differ."""
    n = x.shape[0]
    if n < 2:
        return None
    inverse = torch.unique(x, dim=0, return_inverse=True)[1]
    unique = int(inverse.max()) + 1
    if unique == n:
        return None
    first = torch.full((unique,), n, dtype=torch.long, device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(n, device=x.device), "amin")
    return first[inverse]


def _representatives_from_gram(x: Tensor, gram: Tensor) -> Optional[Tensor]:
    """:func:`duplicate_representatives` from the points' float64 Gram matrix: only the pairs whose
    squared distance in it is within rounding of zero are compared value by value."""
    n = x.shape[0]
    if n < 2:
        return None
    sq = torch.diagonal(gram)
    d2 = sq[:, None] + sq[None, :] - 2.0 * gram
    tol = 1e-9 * torch.maximum(sq[:, None], sq[None, :]).clamp(min=torch.finfo(torch.float64).tiny)
    close = (d2 <= tol).triu(1).nonzero()
    if not len(close):
        return None
    i, j = close[:, 0], close[:, 1]
    equal = (x[i] == x[j]).all(1)
    i, j = i[equal], j[equal]
    if not len(i):
        return None
    same = torch.eye(n, dtype=torch.bool, device=x.device)
    same[i, j] = True
    same[j, i] = True
    return same.to(torch.int8).argmax(1)  # equal points are all equal to each other: the lowest index


def _nearest_with_duplicates(x: Tensor, k: int, representatives: Tensor, block_size: int = 2048) -> Tensor:
    """:func:`nearest_candidates` where some points are equal: equal points tie exactly (ties by index).

    The k-NN search runs with room for a duplicate group across the k-th place; its candidates are
    ordered again by float64 squared distances taken from the differences (0 between equal points).
    """
    n = x.shape[0]
    extra = int(torch.bincount(representatives).max()) - 1
    cand = nearest_candidates(x, min(n - 1, k + extra), block_size)
    x64 = x.double()
    dist = torch.empty(cand.shape, dtype=torch.float64, device=x.device)
    step = max(1, _BUILD_FLOATS // max(1, cand.shape[1] * x.shape[1]))
    for start in range(0, n, step):
        diff = x64[cand[start:start + step]] - x64[start:start + step, None, :]
        dist[start:start + step] = diff.pow(2).sum(2)
    dist = dist.masked_fill(representatives[cand] == representatives[:, None], 0.0)
    by_index = torch.argsort(cand, dim=1)
    cand, dist = cand.gather(1, by_index), dist.gather(1, by_index)
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    return cand.gather(1, order)


def _candidates(x: Tensor, config: ManifoldConfig, candidates: Optional[Tensor], gram: Optional[Tensor],
                representatives: Optional[Tensor]) -> Tensor:
    """The candidate lists of :func:`fit_pieces` (see there)."""
    n = x.shape[0]
    if candidates is not None and config.group_size is not None:
        raise ValueError("pass either candidates or a config with group_size, not both")
    if candidates is not None:
        candidates = _check_candidates(candidates, n, x.device)
    elif config.group_size is not None:
        candidates = group_candidates(x, config.group_size, gram, representatives)
    else:
        k = n - 1 if config.max_candidates is None else min(config.max_candidates, n - 1)
        if k <= 0:
            return torch.empty(n, 0, dtype=torch.long, device=x.device)
        if gram is None:
            if representatives is not None:
                return _nearest_with_duplicates(x, k, representatives)
            return nearest_candidates(x, k)
        # the k-NN rule of plm.neighbors.exact on the Gram matrix: ‖x_j‖² − 2 x_i·x_j, ties by index
        key = torch.diagonal(gram)[None, :] - 2.0 * gram
        if representatives is not None:  # equal points: equal columns of the Gram matrix, nearest of all
            key.masked_fill_(representatives[:, None] == representatives[None, :], float("-inf"))
        key.fill_diagonal_(float("inf"))
        return smallest_k(key, k)[1]
    return candidates if config.max_candidates is None else candidates[:, :config.max_candidates]


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
        block_size: anchors processed together by the tensor code (memory ≈ block_size × (K+1) ×
            max(K+1, d) floats); the compiled kernels take one anchor at a time.

    Returns:
        the fitted :class:`Pieces`.

    Raises:
        ValueError: bad shapes, NaN or inf values, out-of-range candidate indices, or both
            ``candidates`` and ``config.group_size``.
    """
    x = prepare(x, config)
    n, d = x.shape
    m = config.piece_dim
    coords: Optional[Tensor] = None
    if n <= GLOBAL_GRAM_MAX:
        coords = batch_coordinates(x)
        gram_all = coords @ coords.T
        representatives = _representatives_from_gram(x, gram_all)
        if representatives is not None:  # equal points: identical coordinates, rows and columns
            coords = coords[representatives]
            gram_all = gram_all[representatives[:, None], representatives[None, :]]
    else:
        gram_all, representatives = None, duplicate_representatives(x)
    candidates = _candidates(x, config, candidates, gram_all, representatives)
    if gram_all is not None and candidates.shape[1] < kernels.MAX_SET and kernels.enabled(x):
        # compiled, one anchor at a time (the same rules)
        members, coefficients, sizes, ranks = kernels.fit_members(gram_all, candidates, config, x.dtype)
        return Pieces(anchors=x, members=members, sizes=sizes, ranks=ranks, coefficients=coefficients,
                      gram=gram_all, coordinates=coords)
    k = candidates.shape[1]
    members = torch.full((n, k + 1), -1, dtype=torch.long, device=x.device)
    coefficients = torch.zeros(n, k + 1, m, dtype=torch.float64, device=x.device)
    sizes = torch.empty(n, dtype=torch.long, device=x.device)
    ranks = torch.empty(n, dtype=torch.long, device=x.device)
    built = None if gram_all is not None else (torch.empty_like(x), torch.zeros(n, d, m, dtype=x.dtype,
                                                                                  device=x.device))
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
        mask = select_members(gram, valid, config)
        # members first (anchor in column 0, then candidate order); the PCA sees the members only
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
        members[start:stop] = torch.where(mask.gather(1, order), idx.gather(1, order), torch.full_like(idx, -1))
        size = int(mask.sum(1).max())
        keep = order[:, :size]
        gram = gram.gather(1, keep[:, :, None].expand(-1, -1, gram.shape[2]))
        gram = gram.gather(2, keep[:, None, :].expand(-1, size, -1))
        w = mask.gather(1, keep)
        coef, rank = _local_pca(gram, w, m, x.dtype)
        coefficients[start:stop, :size] = coef
        ranks[start:stop] = rank
        sizes[start:stop] = w.sum(1)
        if built is not None:
            assert z is not None
            mean, basis = _combine(x[anchors], z.gather(1, keep[:, :, None].expand(-1, -1, d)), w, coef)
            built[0][start:stop], built[1][start:stop] = mean, basis
    return Pieces(anchors=x, members=members, sizes=sizes, ranks=ranks, coefficients=coefficients, gram=gram_all,
                  coordinates=coords,
                  _built=built)


def batch_coordinates(x: Tensor) -> Tensor:
    """(N, r) float64 coordinates of the points less their mean in an orthonormal basis of their span,
    r = min(N, d): the distances and inner products of the centred points.

    The mean is rounded to float32, so that the subtraction is exact for float32 points. The basis
    is that of a Householder QR decomposition of the centred points (backward stable: the
    coordinates are those of points within float64 rounding of the inputs, so small distances stay
    accurate, unlike coordinates read off a Gram matrix). The pieces of a batch are fitted from the
    coordinates' Gram matrix and scored in R^r instead of R^d (r ≤ N ≪ d at batch sizes). Every
    quantity of the PL model is translation invariant; centring keeps the rounding at the scale of
    the points' spread, not of their distance from the origin.
    """
    x64 = x.double()
    centred = x64 - x64.mean(0).float().double() if len(x) else x64
    return torch.linalg.qr(centred.T, mode="r")[1].T.contiguous()


def _gram_from_global(gram_all: Tensor, idx: Tensor) -> Tensor:
    """(b, n, n) Gram matrices relative to each row's first point, from the points' global Gram matrix:
    (x_a − x_i)·(x_c − x_i) = x_a·x_c − x_a·x_i − x_i·x_c + x_i·x_i (float64)."""
    g = gram_all[idx[:, :, None], idx[:, None, :]]
    g_anchor = g[:, :, :1]
    return g - g_anchor - g_anchor.transpose(1, 2) + g[:, :1, :1]


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


def _local_pca(gram: Tensor, mask: Tensor, m: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Basis coefficients and rank of each member set's top-m principal directions.

    Args:
        gram: (b, n, n) float64 Gram matrices of the points relative to their anchor (anchor first).
        mask: (b, n) members.
        m: piece dimension.
        dtype: the points' dtype (directions within its rounding of the largest one are dropped).

    Returns:
        (b, n, m) float64 coefficients C with U = Σ_k C_k z_k orthonormal (zero columns past the set's
        rank), and (b,) ranks.
    """
    b, n = mask.shape
    w = mask.to(gram.dtype)
    gc = centered_gram(gram, w)
    lam, vec = torch.linalg.eigh(gc)  # ascending
    lam, vec = lam.flip(1)[:, :m], vec.flip(2)[:, :, :m]
    if lam.shape[1] < m:  # fewer candidate slots than m
        pad = m - lam.shape[1]
        lam = torch.cat([lam, lam.new_zeros(b, pad)], 1)
        vec = torch.cat([vec, vec.new_zeros(b, n, pad)], 2)
    total = torch.diagonal(gc, dim1=1, dim2=2).sum(1, keepdim=True)
    scale = (torch.diagonal(gram, dim1=1, dim2=2) * w).amax(1, keepdim=True)  # the members only
    good = (lam > REL_TOL * total) & (lam > 1e3 * torch.finfo(dtype).eps * scale)
    # eigenvectors of non-zero eigenvalues vanish off the members and sum to zero over them, so
    # Σ_k v_k z_k is the centred members' direction without centring z; Gram-Schmidt in the metric
    # of the centred Gram matrix keeps the directions orthonormal to working precision
    raw = vec * w[:, :, None]
    coef = torch.zeros_like(raw)
    for j in range(m):
        col = raw[:, :, j:j + 1]
        if j:
            done = coef[:, :, :j]
            col = col - done @ (done.transpose(1, 2) @ (gc @ col))
        norm2 = (col.transpose(1, 2) @ (gc @ col))[:, :, 0]  # (b, 1)
        ok = good[:, j:j + 1] & (norm2 > 0)
        unit = col / norm2.clamp(min=torch.finfo(gc.dtype).tiny).sqrt()[:, :, None]
        coef[:, :, j:j + 1] = torch.where(ok[:, :, None], unit, torch.zeros_like(col))
    rank = (coef.abs().sum(1) > 0).sum(1)
    return coef, rank


def _combine(anchor: Tensor, z: Tensor, mask: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
    """Means and orthonormal bases of member sets in R^d.

    Args:
        anchor: (b, d) the anchors.
        z: (b, n, d) the member slots relative to their anchor (anchor first; padded slots ignored).
        mask: (b, n) members.
        coef: (b, n, m) basis coefficients (:func:`_local_pca`).

    Returns:
        (b, d) means and (b, d, m) bases, in ``z``'s dtype; the bases are orthonormalised again in
        R^d (Gram-Schmidt), so they are orthonormal to the working precision of ``z``.
    """
    w = mask.to(z.dtype)
    # weighted sums as batched products: no temporary of z's size (b × n × d)
    mu = anchor.to(z.dtype) + (w[:, None, :] @ z)[:, 0] / w.sum(1, keepdim=True)
    rows = (coef.to(z.dtype) * w[:, :, None]).transpose(1, 2) @ z  # (b, m, d): the directions as rows
    present = coef.abs().sum(1) > 0  # (b, m)
    basis = torch.zeros_like(rows)
    for j in range(rows.shape[1]):
        col = rows[:, j]
        if j:
            done = basis[:, :j]  # (b, j, d)
            col = col - ((done @ col[:, :, None]).transpose(1, 2) @ done)[:, 0]
        norm = col.norm(dim=1, keepdim=True)
        ok = present[:, j:j + 1] & (norm > 0)
        basis[:, j] = torch.where(ok, col / norm.clamp(min=torch.finfo(z.dtype).tiny), torch.zeros_like(col))
    return mu, basis.transpose(1, 2)


@torch.no_grad()
def build_means_and_bases(x: Tensor, members: Tensor, sizes: Tensor, coefficients: Tensor,
                          precise: bool) -> tuple[Tensor, Tensor]:
    """(N, d) means and (N, d, m) orthonormal bases of pieces given by coefficients (:class:`Pieces`).

    ``precise``: combine the points in float64 (the pieces of up to :data:`GLOBAL_GRAM_MAX` points).
    Anchors are processed in blocks of about :data:`_BUILD_FLOATS` / (members × d) at a time.
    """
    n, d = x.shape
    m = coefficients.shape[2]
    size = int(sizes.max()) if n else 0
    work = x.double() if precise else x
    means = torch.empty_like(x)
    bases = torch.zeros(n, d, m, dtype=x.dtype, device=x.device)
    step = max(1, _BUILD_FLOATS // max(1, size * d))
    for start in range(0, n, step):
        stop = min(n, start + step)
        idx = members[start:stop, :size]
        z = work[idx.clamp(min=0)]
        z -= work[start:stop, None, :]
        mu, basis = _combine(work[start:stop], z, idx >= 0, coefficients[start:stop, :size])
        means[start:stop], bases[start:stop] = mu.to(x.dtype), basis.to(x.dtype)
    return means, bases
