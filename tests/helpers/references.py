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
