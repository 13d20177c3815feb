"""Compiled CPU kernels of the PL model of a batch (numba): subset selection, local PCA and pair scoring.

A training batch's PL model is thousands of tiny operations when written as batched tensor code
(a handful of points per anchor, 120 anchors): on a CPU their dispatch, not their arithmetic, is
the cost. These kernels run the same steps as :mod:`plm.manifold.selection`,
:func:`plm.manifold.pieces.fit_pieces` and :mod:`plm.manifold.similarity` one anchor at a time in
compiled loops, on the float64 Gram matrix and coordinates of the batch, with the same rules and
tolerances (``tests/manifold`` checks both paths against the explicit-loop reference). The
eigen-decompositions of the small member sets use cyclic Jacobi rotations (accurate to float64
rounding), so candidate pools of up to :data:`MAX_SET` points per anchor are served (the seed
group and the 16 nearest points; the whole batch goes to the tensor code).

No numpy BLAS or LAPACK runs inside a kernel: their thread pool, left spinning after each call,
slowed torch's next operations several times over on a 2-core machine (the two products of all
points with all pieces run in torch instead).

They serve tensors on the CPU when numba is installed (:func:`enabled`); elsewhere (a GPU, no
numba, ``PLM_KERNELS=0``) the tensor code runs. They are compiled on first use (about 13 s on 2
cores; ``scripts/install.sh`` does it ahead with :func:`warm_up`) and cached on disk.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from plm.manifold.config import ManifoldConfig
from plm.manifold.selection import ERR_SLACK, REL_TOL

CRITERIA_CODES = {"residual_variance": 0, "relative_residual": 1, "candidate_residual": 2,
                  "relative_candidate_residual": 3}
MAX_SET = 24  # the kernels fit pools of up to this many points per anchor (anchor included), else the tensor code
_TINY = float(np.finfo(np.float64).tiny)
_KERNELS: list[str] = []  # the functions compiled on first use
_COMPILED = False
_LOCK = threading.Lock()


@functools.cache
def available() -> bool:
    """Whether numba can be imported (checked on first use, not when plm is imported: about 0.2 s).

    A numba that does not import (one built for another numpy, say) leaves the tensor code in charge."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def enabled(x: Tensor) -> bool:
    """Whether the kernels serve the points ``x``: a CPU tensor, numba installed, ``PLM_KERNELS`` not ``0``."""
    return x.device.type == "cpu" and os.environ.get("PLM_KERNELS", "1") != "0" and available()


def _kernel(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a function for compilation (numba resolves a kernel's callees when it compiles it, so
    they are all replaced by their compiled versions at once, on first use: importing plm stays fast)."""
    _KERNELS.append(fn.__name__)
    return fn


def _compile() -> None:
    global _COMPILED
    with _LOCK:
        if _COMPILED:
            return
        import numba

        for name in _KERNELS:
            try:  # cached next to this file, or in the user's cache folder (NUMBA_CACHE_DIR)
                globals()[name] = numba.njit(cache=True, nogil=True)(globals()[name])
            except RuntimeError:  # nowhere writable: compiled in every process (about 13 s on 2 cores)
                globals()[name] = numba.njit(nogil=True)(globals()[name])
        _COMPILED = True


def warm_up() -> None:
    """Compile every kernel now (and cache it) on a tiny batch: ``scripts/install.sh`` runs this, so
    that the first training run does not wait for the compiler. A no-op without numba."""
    if not available():
        return
    y = torch.eye(4, dtype=torch.float64)
    candidates = torch.tensor([[1, 2], [0, 2], [3, 1], [2, 0]])
    members, coefficients, sizes, _ = fit_members(y @ y.T, candidates, ManifoldConfig(), torch.float32)
    directed_terms(y, members, sizes, coefficients, 1e-4)


@_kernel
def _eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Eigenvalues (ascending) and eigenvectors (columns) of a small symmetric matrix (cyclic Jacobi)."""
    n = a.shape[0]
    w = a.copy()
    v = np.eye(n)
    scale = 0.0
    for p in range(n):
        for q in range(n):
            scale += w[p, q] * w[p, q]
    for _sweep in range(60):
        off = 0.0
        for p in range(n):
            for q in range(p + 1, n):
                off += w[p, q] * w[p, q]
        if off <= 1e-34 * scale:  # off-diagonal norm at 1e-17 of the matrix's: float64 rounding
            break
        for p in range(n - 1):
            for q in range(p + 1, n):
                apq = w[p, q]
                if apq * apq <= 1e-38 * scale:
                    continue
                tau = (w[q, q] - w[p, p]) / (2.0 * apq)
                t = 1.0 / (abs(tau) + math.sqrt(1.0 + tau * tau))
                if tau < 0.0:
                    t = -t
                c = 1.0 / math.sqrt(1.0 + t * t)
                s = t * c
                for k in range(n):
                    wkp, wkq = w[k, p], w[k, q]
                    w[k, p] = c * wkp - s * wkq
                    w[k, q] = s * wkp + c * wkq
                for k in range(n):
                    wpk, wqk = w[p, k], w[q, k]
                    w[p, k] = c * wpk - s * wqk
                    w[q, k] = s * wpk + c * wqk
                w[p, q] = 0.0
                w[q, p] = 0.0
                for k in range(n):
                    vkp, vkq = v[k, p], v[k, q]
                    v[k, p] = c * vkp - s * vkq
                    v[k, q] = s * vkp + c * vkq
    lam = np.empty(n)
    for p in range(n):
        lam[p] = w[p, p]
    order = np.argsort(lam, kind="mergesort")
    return lam[order], v[:, order]


@_kernel
def _centred(g: np.ndarray, idx: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """The Gram matrix of the points ``idx`` (rows of ``g``) centred on their mean."""
    s = idx.shape[0]
    row = np.zeros(s)
    for a in range(s):
        for b in range(s):
            row[a] += g[idx[a], idx[b]]
        row[a] /= s
    total = 0.0
    for a in range(s):
        total += row[a]
    total /= s
    gc = np.empty((s, s))
    for a in range(s):
        for b in range(s):
            gc[a, b] = g[idx[a], idx[b]] - row[a] - row[b] + total
    return gc


@_kernel
def _set_error(g: np.ndarray, idx: np.ndarray, m: int, criterion: int,
               dist: np.ndarray) -> float:  # pragma: no cover - compiled
    """:func:`plm.manifold.selection.fit_error` of the set ``idx`` (anchor first)."""
    s = idx.shape[0]
    gc = _centred(g, idx)
    lam, vec = _eigh(gc)
    top = min(m, s)
    if criterion == 0:
        total = 0.0
        for a in range(s):
            total += max(lam[a], 0.0)
        kept = 0.0
        for a in range(s - top, s):
            kept += max(lam[a], 0.0)
        if total <= 0.0:
            return 0.0
        return max(total - kept, 0.0) / max(total, _TINY)
    mean_res = 0.0
    for a in range(s):
        proj = 0.0
        for j in range(s - top, s):
            proj += vec[a, j] * vec[a, j] * max(lam[j], 0.0)
        mean_res += math.sqrt(max(gc[a, a] - proj, 0.0))
    mean_res /= s
    mean_dist = 0.0
    for a in range(1, s):
        mean_dist += dist[idx[a]]
    mean_dist /= max(s - 1, 1)
    if mean_dist <= 0.0:
        return 0.0
    return mean_res / max(mean_dist, _TINY)


@_kernel
def _residuals(g: np.ndarray, idx: np.ndarray, n: int, m: int, rel_tol: float) -> np.ndarray:  # pragma: no cover
    """(n,) orthogonal distance of every slot to the piece of the members ``idx``
    (:func:`plm.manifold.selection._residuals_to_piece`)."""
    s = idx.shape[0]
    row = np.zeros(n)
    for k in range(n):
        for a in range(s):
            row[k] += g[k, idx[a]]
        row[k] /= s
    total = 0.0
    for a in range(s):
        total += row[idx[a]]
    total /= s
    gc = np.empty((s, s))
    for a in range(s):
        for b in range(s):
            gc[a, b] = g[idx[a], idx[b]] - row[idx[a]] - row[idx[b]] + total
    lam, vec = _eigh(gc)
    trace = 0.0
    for a in range(s):
        trace += gc[a, a]
    out = np.empty(n)
    for k in range(n):
        proj2 = 0.0
        for j in range(max(s - m, 0), s):
            if lam[j] > rel_tol * trace:
                cross = 0.0
                for a in range(s):
                    cross += (g[k, idx[a]] - row[k] - row[idx[a]] + total) * vec[a, j]
                proj2 += cross * cross / max(lam[j], _TINY)
        out[k] = math.sqrt(max(g[k, k] - 2.0 * row[k] + total - proj2, 0.0))
    return out


@_kernel
def _members(mask: np.ndarray, upto: int, extra: int) -> np.ndarray:  # pragma: no cover - compiled
    """The positions of the members among the first ``upto`` slots, then ``extra`` (when ≥ 0)."""
    count = 0
    for a in range(upto):
        if mask[a]:
            count += 1
    idx = np.empty(count + (1 if extra >= 0 else 0), dtype=np.int64)
    c = 0
    for a in range(upto):
        if mask[a]:
            idx[c] = a
            c += 1
    if extra >= 0:
        idx[c] = extra
    return idx


@_kernel
def _select(g: np.ndarray, valid: np.ndarray, m: int, criterion: int, eps: float, stop: bool,
            subset_selection: bool, rel_tol: float, slack: float) -> np.ndarray:  # pragma: no cover
    """(n,) bool members of one anchor's neighbourhood (:func:`plm.manifold.selection.select_members`)."""
    n = valid.shape[0]
    mask = np.zeros(n, dtype=np.bool_)
    mask[0] = True
    if not subset_selection:
        for t in range(1, n):
            mask[t] = valid[t]
        return mask
    dist = np.empty(n)
    for t in range(n):
        dist[t] = math.sqrt(max(g[t, t], 0.0))
    if criterion <= 1:
        growing = True
        for t in range(1, n):
            if t <= m:
                accept = valid[t]
            elif valid[t]:
                accept = _set_error(g, _members(mask, t, t), m, criterion, dist) <= eps + slack
            else:
                accept = False
            if stop:
                growing = growing and (accept or not valid[t])
                accept = accept and growing
            mask[t] = accept
        return mask
    if n == 1:
        return mask
    mask[1] = valid[1]  # the nearest candidate joins untested
    last = 1
    radius = np.inf
    for t in range(1, n):
        if valid[t] and dist[t] < radius:
            radius = dist[t]
    while True:
        first_later = -1
        for t in range(last + 1, n):
            if valid[t]:
                first_later = t
                break
        if first_later < 0:
            return mask
        res = _residuals(g, _members(mask, n, -1), n, m, rel_tol)
        nxt = -1
        for t in range(first_later, n):
            if not valid[t]:
                continue
            r = res[t]
            if criterion == 3:
                r = r / max(radius, _TINY) if radius > 0.0 else np.inf
            if r <= eps + slack:
                nxt = t
                break
            if stop:
                break
        if nxt < 0:
            return mask
        mask[nxt] = True
        last = nxt


@_kernel
def _local_pca(g: np.ndarray, idx: np.ndarray, m: int, rel_tol: float,
               dtype_eps: float) -> tuple[np.ndarray, int]:  # pragma: no cover - compiled
    """(s, m) basis coefficients of the members ``idx`` and the rank (:func:`plm.manifold.pieces._local_pca`)."""
    s = idx.shape[0]
    gc = _centred(g, idx)
    lam, vec = _eigh(gc)
    total = 0.0
    scale = 0.0
    for a in range(s):
        total += gc[a, a]
        scale = max(scale, g[idx[a], idx[a]])
    coef = np.zeros((s, m))
    gcol = np.empty(s)
    dots = np.empty(m)
    rank = 0
    for j in range(min(m, s)):
        lj = lam[s - 1 - j]
        col = vec[:, s - 1 - j].copy()
        if j:  # classical Gram-Schmidt in the metric of gc: col −= C (Cᵀ (gc col)), C the directions so far
            for a in range(s):
                gcol[a] = 0.0
                for b in range(s):
                    gcol[a] += gc[a, b] * col[b]
            for done in range(j):
                dot = 0.0
                for a in range(s):
                    dot += coef[a, done] * gcol[a]
                dots[done] = dot
            for done in range(j):
                for a in range(s):
                    col[a] -= coef[a, done] * dots[done]
        norm2 = 0.0
        for a in range(s):
            acc = 0.0
            for b in range(s):
                acc += gc[a, b] * col[b]
            norm2 += col[a] * acc
        if lj > rel_tol * total and lj > 1e3 * dtype_eps * scale and norm2 > 0.0:
            inv = 1.0 / math.sqrt(max(norm2, _TINY))
            for a in range(s):
                coef[a, j] = col[a] * inv
            rank += 1
    return coef, rank


@_kernel
def _fit(gram: np.ndarray, candidates: np.ndarray, m: int, criterion: int, eps: float, stop: bool,
         subset_selection: bool, rel_tol: float, slack: float, dtype_eps: float
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    n, k = candidates.shape
    members = np.full((n, k + 1), -1, dtype=np.int64)
    coefficients = np.zeros((n, k + 1, m))
    sizes = np.empty(n, dtype=np.int64)
    ranks = np.empty(n, dtype=np.int64)
    slots = np.empty(k + 1, dtype=np.int64)
    valid = np.empty(k + 1, dtype=np.bool_)
    g = np.empty((k + 1, k + 1))
    for i in range(n):
        slots[0] = i
        valid[0] = True
        for t in range(k):
            valid[t + 1] = candidates[i, t] >= 0
            slots[t + 1] = candidates[i, t] if candidates[i, t] >= 0 else 0
        gii = gram[i, i]
        for a in range(k + 1):  # relative to the anchor: (x_a − x_i)·(x_c − x_i)
            for c in range(k + 1):
                g[a, c] = gram[slots[a], slots[c]] - gram[slots[a], i] - gram[i, slots[c]] + gii
        idx = _members(_select(g, valid, m, criterion, eps, stop, subset_selection, rel_tol, slack), k + 1, -1)
        count = idx.shape[0]
        for c in range(count):  # members first: the anchor, then in candidate order
            members[i, c] = slots[idx[c]]
        coef, rank = _local_pca(g, idx, m, rel_tol, dtype_eps)
        coefficients[i, :count] = coef
        sizes[i] = count
        ranks[i] = rank
    return members, coefficients, sizes, ranks


def fit_members(gram: Tensor, candidates: Tensor, config: ManifoldConfig, dtype: torch.dtype
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Members, coefficients, sizes and ranks of every point's piece (as :func:`plm.manifold.fit_pieces`).

    Args:
        gram: (N, N) float64 Gram matrix of the points (their coordinates').
        candidates: (N, K) candidate indices, nearest first (-1 = none).
        config: the :class:`plm.manifold.ManifoldConfig`.
        dtype: the points' dtype (directions within its rounding of the largest one are dropped).
    """
    _compile()
    out = _fit(gram.contiguous().numpy(), candidates.contiguous().numpy().astype(np.int64), config.piece_dim,
               CRITERIA_CODES[config.criterion], float(config.eps), config.on_breach == "stop",
               bool(config.subset_selection), REL_TOL, ERR_SLACK, float(torch.finfo(dtype).eps))
    return tuple(torch.from_numpy(a) for a in out)  # type: ignore[return-value]


@_kernel
def _pieces_in_coordinates(y: np.ndarray, members: np.ndarray, sizes: np.ndarray,
                           coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """(N, r) means and (N·m, r) orthonormal basis rows of the pieces (:func:`plm.manifold.pieces._combine`)."""
    n, r = y.shape
    m = coefficients.shape[2]
    means = np.empty((n, r))
    bases = np.zeros((n * m, r))  # row i·m + q: direction q of piece i
    col = np.empty(r)
    dots = np.empty(m)
    for i in range(n):
        s = sizes[i]
        for t in range(r):
            acc = 0.0
            for a in range(s):
                acc += y[members[i, a], t] - y[i, t]
            means[i, t] = y[i, t] + acc / s
        for j in range(m):
            present = False
            for a in range(s):
                if coefficients[i, a, j] != 0.0:
                    present = True
            for t in range(r):
                acc = 0.0
                for a in range(s):
                    acc += coefficients[i, a, j] * (y[members[i, a], t] - y[i, t])
                col[t] = acc
            for done in range(j):  # classical Gram-Schmidt: the products with the column as built
                dot = 0.0
                for t in range(r):
                    dot += bases[i * m + done, t] * col[t]
                dots[done] = dot
            for done in range(j):
                for t in range(r):
                    col[t] -= dots[done] * bases[i * m + done, t]
            norm = 0.0
            for t in range(r):
                norm += col[t] * col[t]
            norm = math.sqrt(norm)
            if present and norm > 0.0:
                for t in range(r):
                    bases[i * m + j, t] = col[t] / max(norm, _TINY)
    return means, bases


@_kernel
def _directed(y: np.ndarray, means: np.ndarray, bases: np.ndarray, at_points: np.ndarray, at_means: np.ndarray,
              near: float) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """(N, N) o² and p² of y_i against piece j (:func:`plm.manifold.similarity._fitted_directed_similarity`),
    given the products y_i · U_jq (N, N·m) and y_i · μ_j (N, N)."""
    n, r = y.shape
    m = bases.shape[0] // max(n, 1)
    mu_u = np.empty(n * m)  # μ_j · U_jq
    e = np.empty(n * m)  # (μ_j − a_j) · U_jq
    r2 = np.empty(n)  # ‖(μ_j − a_j)‖² − ‖e_j‖²: the part of μ_j − a_j off the piece
    mu2 = np.empty(n)
    x2 = np.empty(n)
    for j in range(n):
        shift2 = 0.0
        sq = 0.0
        xx = 0.0
        for t in range(r):
            shift = means[j, t] - y[j, t]
            shift2 += shift * shift
            sq += means[j, t] * means[j, t]
            xx += y[j, t] * y[j, t]
        mu2[j] = sq
        x2[j] = xx
        e2 = 0.0
        for q in range(m):
            along_mean = 0.0
            along_shift = 0.0
            for t in range(r):
                along_mean += means[j, t] * bases[j * m + q, t]
                along_shift += (means[j, t] - y[j, t]) * bases[j * m + q, t]
            mu_u[j * m + q] = along_mean
            e[j * m + q] = along_shift
            e2 += along_shift * along_shift
        r2[j] = max(shift2 - e2, 0.0)
    off = np.empty((n, n))
    along = np.empty((n, n))
    c = np.empty(m)
    for i in range(n):
        for j in range(n):
            dist2 = x2[i] + mu2[j] - 2.0 * at_means[i, j]
            c2 = 0.0
            for q in range(m):
                c[q] = at_points[i, j * m + q] - mu_u[j * m + q]
                c2 += c[q] * c[q]
            o2 = dist2 - c2
            if o2 <= near * dist2:  # on or next to the piece: again from the differences
                dist2 = 0.0
                for t in range(r):
                    diff = y[i, t] - means[j, t]
                    dist2 += diff * diff
                c2 = 0.0
                for q in range(m):
                    acc = 0.0
                    for t in range(r):
                        acc += (y[i, t] - means[j, t]) * bases[j * m + q, t]
                    c[q] = acc
                    c2 += acc * acc
                o2 = dist2 - c2
            p2 = r2[j]
            for q in range(m):
                p2 += (e[j * m + q] + c[q]) ** 2
            off[i, j] = o2
            along[i, j] = p2
    return off, along


def directed_terms(coordinates: Tensor, members: Tensor, sizes: Tensor, coefficients: Tensor,
                   near: float) -> tuple[Tensor, Tensor]:
    """(N, N) float64 o² and p² of every fitted point against every piece, from the points' coordinates
    (:func:`plm.manifold.similarity._fitted_directed_similarity`, whose rules it follows: the pairs with
    o² ≤ ``near`` · ‖x − μ‖² again from their differences).

    The two products of all points with all pieces run in torch (see the module docstring).
    """
    _compile()
    y = coordinates.contiguous()
    means, bases = _pieces_in_coordinates(y.numpy(), members.contiguous().numpy(), sizes.contiguous().numpy(),
                                          coefficients.contiguous().numpy())
    means_t, bases_t = torch.from_numpy(means), torch.from_numpy(bases)
    o2, p2 = _directed(y.numpy(), means, bases, (y @ bases_t.T).numpy(), (y @ means_t.T).numpy(), float(near))
    return torch.from_numpy(o2), torch.from_numpy(p2)
