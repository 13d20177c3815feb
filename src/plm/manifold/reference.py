"""Explicit-loop reference of the PL model: plain Python loops over points and pairs, numpy float64.

Slow by design; it states the algorithm of :mod:`plm.manifold.pieces` and
:mod:`plm.manifold.similarity` one point at a time, and the tests and the benchmark compare the
batched code with it.
"""

from __future__ import annotations

import math

import numpy as np

from plm.manifold.config import ManifoldConfig


def reference_fit(x: np.ndarray, config: ManifoldConfig = ManifoldConfig()) -> list[dict]:
    """For every point: its selected neighbourhood, mean and top-m basis, by explicit loops.

    Returns:
        one dict per point with ``members`` (list, anchor first), ``mean`` (d,), ``basis`` (d, m).
    """
    x = _prepare(x, config)
    n = len(x)
    m = config.piece_dim
    k = n - 1 if config.max_candidates is None else min(config.max_candidates, n - 1)
    g = config.group_size
    out = []
    for i in range(n):
        pool = range(n) if g is None else range(i // g * g, i // g * g + g)
        dists = [(float(np.sum((x[i] - x[j]) ** 2)), j) for j in pool if j != i]
        candidates = [j for _, j in sorted(dists)][:k]
        members = [i]
        radius = float(np.linalg.norm(x[candidates[0]] - x[i])) if candidates else float("inf")
        for t, j in enumerate(candidates):
            if not config.subset_selection:
                members.append(j)
                continue
            if config.criterion in ("candidate_residual", "relative_candidate_residual"):
                if t == 0:
                    ok = True
                else:
                    res = reference_candidate_residual(x[members], x[j], m)
                    if config.criterion == "relative_candidate_residual":
                        res = res / radius if radius > 0 else float("inf")
                    ok = res <= config.eps + 1e-6
            else:
                trial = members + [j]
                err = 0.0 if len(trial) <= m + 1 else reference_fit_error(x[trial], m, config.criterion)
                ok = err <= config.eps + 1e-6  # same rounding slack as the batched code
            if ok:
                members.append(j)
            elif config.on_breach == "stop":
                break
        mean, basis = _pca(x[members], m)
        out.append({"members": members, "mean": mean, "basis": basis})
    return out


def reference_candidate_residual(members: np.ndarray, candidate: np.ndarray, m: int) -> float:
    """Distance from ``candidate`` to the piece of ``members`` (mean + top-m principal directions)."""
    mean, basis = _pca(members, m)
    c = candidate - mean
    return float(np.linalg.norm(c - basis @ (basis.T @ c)))


def reference_normalize(s: np.ndarray, how: str) -> np.ndarray:
    """Row-wise normalisation of a similarity matrix by loops, then symmetrised (see
    :func:`plm.manifold.normalize_similarity`)."""
    n = len(s)
    if how == "none" or n < 3:
        return s.copy()
    out = np.ones_like(s)
    for i in range(n):
        others = [s[i, j] for j in range(n) if j != i]
        for j in range(n):
            if j == i:
                continue
            v = s[i, j]
            if how == "row_max":
                out[i, j] = min(v / max(others), 1.0)
            elif how == "row_minmax":
                span = max(others) - min(others)
                out[i, j] = (v - min(others)) / span if span > 0 else 1.0
            else:  # row_rank: mean rank among the others, over n - 2
                below = sum(o < v for o in others)
                ties = sum(o == v for o in others) - 1
                out[i, j] = (below + 0.5 * ties) / (n - 2)
    sym = 0.5 * (out + out.T)
    np.fill_diagonal(sym, 1.0)
    return sym


def reference_fit_error(points: np.ndarray, m: int, criterion: str) -> float:
    """Scale-free m-dim PCA fit error of a point set whose first row is the anchor."""
    centred = _centre(points)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    lam = sv ** 2
    total = float(lam.sum())
    if criterion == "residual_variance":
        return 0.0 if total <= 0 else float(lam[m:].sum() / total)
    top = vt[:m].T
    residuals = [float(np.linalg.norm(c - top @ (top.T @ c))) for c in centred]
    to_anchor = [float(np.linalg.norm(p - points[0])) for p in points[1:]]
    mean_dist = float(np.mean(to_anchor)) if to_anchor else 0.0
    return 0.0 if mean_dist <= 0 else float(np.mean(residuals)) / mean_dist


def _centre(points: np.ndarray) -> np.ndarray:
    """The points less their mean, taken relative to the first point (equal points give exact zeros,
    not the rounding of their mean)."""
    rel = points - points[0]
    return rel - rel.mean(0)


def _pca(points: np.ndarray, m: int, rel_tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    mean = points.mean(0)
    centred = _centre(points)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    lam = sv ** 2
    total = lam.sum()
    basis = np.zeros((points.shape[1], m))
    for j in range(min(m, len(lam))):
        if lam[j] > rel_tol * total and lam[j] > 0:
            basis[:, j] = vt[j]
    return mean, basis


def reference_directed(point: np.ndarray, anchor: np.ndarray, mean: np.ndarray, basis: np.ndarray,
                       n_alpha: float, n_beta: float) -> float:
    """s′ of one point against one piece, straight from the formula."""
    proj = mean + basis @ (basis.T @ (point - mean))
    o = float(np.linalg.norm(point - proj))
    p = float(np.linalg.norm(proj - anchor))
    return (1.0 + o / 2.0) ** (-n_alpha) * (1.0 + p) ** (-n_beta)


def reference_similarity(x: np.ndarray, config: ManifoldConfig = ManifoldConfig()) -> np.ndarray:
    """The symmetrised (N, N) similarity by loops over pairs."""
    pieces = reference_fit(x, config)
    x = _prepare(x, config)
    n = len(x)
    directed = np.ones((n, n))
    for i in range(n):
        for j in range(n):
            pj = pieces[j]
            directed[i, j] = reference_directed(x[i], x[j], pj["mean"], pj["basis"], config.n_alpha, config.n_beta)
    s = np.ones((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                a, b = directed[i, j], directed[j, i]
                s[i, j] = {"mean": 0.5 * (a + b), "max": max(a, b), "min": min(a, b),
                           "geometric": math.sqrt(a * b)}[config.symmetrize]
    return s


def _prepare(x: np.ndarray, config: ManifoldConfig) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if config.normalize_inputs:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.maximum(norms, 1e-12)
    return x
