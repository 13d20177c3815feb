"""Explicit-loop references shared by several test modules."""

from __future__ import annotations

import numpy as np


def reference_expansion(s: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """Explicit loops: N_k(i) = i, then the others by decreasing cosine (ties: lower index first)."""
    n = len(x)
    if k <= 1:
        return s.copy()
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    near = []
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: (-float(unit[i] @ unit[j]), j))
        near.append([i, *others[:k - 1]])
    q = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            q[i, j] = sum(s[m, j] for m in near[i]) / len(near[i])
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = 1.0 if i == j else 0.5 * (q[i, j] + q[j, i])
    return out


def reference_context(s: np.ndarray, k: int, c: float, mode: str = "mix") -> np.ndarray:
    """(1 − c) s + c W_C (``mode`` "raise": s + c max(W_C − s, 0)) by loops: N_k(i) = i, then the
    others by decreasing s[i]; R(i) = the j ∈ N_k(i)
    with i ∈ N_k(j); W̃(i, j) = |R(i) ∩ R(j)| / |R(i)| for j ∈ R(i); Ŵ(i) = mean of W̃ over the first
    round(k/2) of N_k(i); W_C = (Ŵ + Ŵᵀ)/2."""
    n = len(s)
    if c == 0:
        return s.copy()
    near = [[i, *sorted((j for j in range(n) if j != i), key=lambda j: (-float(s[i, j]), j))[:k - 1]]
            for i in range(n)]
    recip = [{j for j in near[i] if i in near[j]} for i in range(n)]
    tilde = np.zeros((n, n))
    for i in range(n):
        for j in recip[i]:
            tilde[i, j] = len(recip[i] & recip[j]) / len(recip[i])
    half = max(1, int(np.around(k / 2)))
    hat = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            hat[i, j] = sum(tilde[q, j] for q in near[i][:half]) / half
    w_c = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            w_c[i, j] = 0.5 * (hat[i, j] + hat[j, i])
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = s[i, j] + c * max(w_c[i, j] - s[i, j], 0.0) if mode == "raise" \
                else (1 - c) * s[i, j] + c * w_c[i, j]
    return out
