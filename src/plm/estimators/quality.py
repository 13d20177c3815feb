"""Quality of an estimated similarity against ground-truth labels: label purity and correlation.

Definitions (exact; docs/similarity.md explains them):

- **Purity** of a group G = the share of G's members carrying G's most frequent label. The
  estimator's purity is the unweighted mean over its groups with at least ``min_size`` (2) members
  (a singleton is trivially pure). Groups are clusters, or each point's selected neighbourhood.
- **Correlation** = Pearson correlation between the estimated s_ij and y_ij = 1[label_i = label_j]
  over all unordered pairs i < j. Up to ``exact_max_pairs`` pairs it is computed exactly. Beyond,
  it is estimated by stratified sampling: the pairs split into three disjoint strata, (A) the
  k-NN pairs (i, j with j among i's K nearest or i among j's), computed exactly; (B) the other
  same-label pairs, all of them when there are at most ``n_samples`` (100,000), else ``n_samples``
  drawn uniformly; (C) the other different-label pairs, ``n_samples`` drawn uniformly. The sums
  Σs, Σs², Σs·y over all pairs are estimated as A's sums + |B|·mean_B + |C|·mean_C (unbiased),
  and Σy is exact. The sample is seeded, so two estimators see the same pairs.
- **ROC-AUC and average precision** of s as a score for the same-class indicator, over all pairs
  (exact up to ``rank_exact_max`` pairs, else from the stratified sample with its weights) and over
  the k-NN pairs: rank measures, so unlike the correlation they do not depend on how an estimator
  calibrates its scale (raising s to a power changes the correlation, not the ranking).
- **Size-matched k-NN purity**: the purity of each point with its nearest neighbours, in groups of
  the sizes the estimator's groups have (purity falls with group size, so smaller groups look
  purer for that reason alone).
- **k-NN correlation** (supplementary, local) = the same Pearson correlation over the unique
  k-NN pairs only (j among i's 10 nearest or i among j's): how well s separates same-label from
  different-label pairs among near neighbours, where the hard decisions are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Optional, overload

import numpy as np

from plm.estimators.base import Neighbors

PairFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def purity(groups: Optional[Sequence[np.ndarray]], labels: np.ndarray, min_size: int = 2) -> Optional[float]:
    """Mean majority-label share of the groups with at least ``min_size`` members (None: no groups)."""
    if groups is None:
        return None
    labels = np.asarray(labels)
    shares = []
    for g in groups:
        g = np.asarray(g, dtype=np.int64)
        if len(g) < min_size:
            continue
        _, counts = np.unique(labels[g], return_counts=True)
        shares.append(counts.max() / len(g))
    return float(np.mean(shares)) if shares else None


def mean_group_size(groups: Optional[Sequence[np.ndarray]]) -> Optional[float]:
    """Average number of members per group (None: no groups)."""
    if groups is None or len(groups) == 0:
        return None
    return float(np.mean([len(g) for g in groups]))


def _pearson(n: float, s1: float, s2: float, sy: float, y1: float) -> float:
    """Pearson correlation from pair count and sums Σs, Σs², Σs·y, Σy (y binary, so Σy² = Σy)."""
    ms, my = s1 / n, y1 / n
    cov = sy / n - ms * my
    var_s = max(s2 / n - ms * ms, 0.0)
    var_y = max(my - my * my, 0.0)
    if var_s <= 1e-18 or var_y <= 0:
        return float("nan")
    return float(cov / np.sqrt(var_s * var_y))


def exact_correlation(pairs: PairFn, labels: np.ndarray, block_rows: int = 512) -> float:
    """Pearson correlation of s and 1[same label] over all pairs i < j, row block by row block."""
    labels = np.asarray(labels)
    n = len(labels)
    s1 = s2 = sy = 0.0
    for start in range(0, n - 1, block_rows):
        rows_i = np.arange(start, min(n - 1, start + block_rows))
        lens = n - 1 - rows_i
        r = np.repeat(rows_i, lens)
        c = np.concatenate([np.arange(i + 1, n) for i in rows_i])
        s = pairs(r, c).astype(np.float64)
        y = labels[r] == labels[c]
        s1 += s.sum()
        s2 += (s * s).sum()
        sy += s[y].sum()
    _, counts = np.unique(labels, return_counts=True)
    n_pairs = n * (n - 1) / 2
    return _pearson(n_pairs, s1, s2, sy, float((counts * (counts - 1) / 2).sum()))


def knn_pairs(neighbors: Neighbors, k: int) -> np.ndarray:
    """Unique unordered k-NN pairs as sorted int64 codes i·N + j with i < j."""
    n = neighbors.indices.shape[0]
    idx = neighbors.indices[:, :k]
    r = np.repeat(np.arange(n), idx.shape[1])
    c = idx.ravel()
    keep = (c >= 0) & (c != r)
    lo, hi = np.minimum(r[keep], c[keep]), np.maximum(r[keep], c[keep])
    return np.unique(lo.astype(np.int64) * n + hi)


def sample_strata(labels: np.ndarray, neighbors: Neighbors, k: int = 10, n_samples: int = 100_000,
                  seed: int = 0) -> dict:
    """The stratified pair sample of the module docstring (reused for every estimator).

    Returns:
        dict with ``strata``: list of (rows, cols, weight) where weight = stratum size / sample size,
        plus ``n_pairs`` and ``n_pos`` (exact).
    """
    labels = np.asarray(labels)
    n = len(labels)
    rng = np.random.default_rng(seed)
    a = knn_pairs(neighbors, k)
    a_rows, a_cols = a // n, a % n
    a_pos = labels[a_rows] == labels[a_cols]
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n_pos = float((counts * (counts - 1) / 2).sum())
    n_pairs = n * (n - 1) / 2
    strata = [(a_rows, a_cols, 1.0)]
    # (B) positive pairs outside A
    b_size = n_pos - float(a_pos.sum())
    if b_size > 0:
        if b_size <= n_samples:
            order = np.argsort(inverse, kind="stable")
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            rr, cc = [], []
            for ci, cnt in enumerate(counts):
                members = order[starts[ci]:starts[ci] + cnt]
                iu, ju = np.triu_indices(cnt, 1)
                rr.append(members[iu])
                cc.append(members[ju])
            r, c = np.concatenate(rr), np.concatenate(cc)
            lo, hi = np.minimum(r, c), np.maximum(r, c)
            keep = ~np.isin(lo.astype(np.int64) * n + hi, a)
            strata.append((lo[keep], hi[keep], 1.0))
        else:
            r, c = _sample_pairs(rng, n, n_samples, a, lambda r, c: labels[r] == labels[c],
                                 class_members=(inverse, counts))
            strata.append((r, c, b_size / len(r)))
    # (C) negative pairs outside A
    c_size = n_pairs - n_pos - float((~a_pos).sum())
    if c_size > 0:
        r, c = _sample_pairs(rng, n, n_samples, a, lambda r, c: labels[r] != labels[c])
        strata.append((r, c, c_size / len(r)))
    return {"strata": strata, "n_pairs": n_pairs, "n_pos": n_pos}


def _sample_pairs(rng: np.random.Generator, n: int, size: int, exclude: np.ndarray,
                  accept: Callable[[np.ndarray, np.ndarray], np.ndarray],
                  class_members: Optional[tuple[np.ndarray, np.ndarray]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Uniform unordered pairs (with replacement) satisfying ``accept`` and not in ``exclude``."""
    got_r, got_c, have = [], [], 0
    if class_members is not None:  # positive pairs: class ∝ its pair count, then two distinct members
        inverse, counts = class_members
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        weights = counts * (counts - 1) / 2.0
        prob = weights / weights.sum()
    for _ in range(1000):
        want = max(2 * (size - have), 1024)
        if class_members is not None:
            cls = rng.choice(len(counts), size=want, p=prob)
            i = rng.integers(0, counts[cls])
            j = rng.integers(0, counts[cls] - 1)
            j = j + (j >= i)
            r, c = order[starts[cls] + i], order[starts[cls] + j]
        else:
            r = rng.integers(0, n, size=want)
            c = rng.integers(0, n, size=want)
        lo, hi = np.minimum(r, c), np.maximum(r, c)
        keep = (lo != hi) & accept(lo, hi) & ~np.isin(lo.astype(np.int64) * n + hi, exclude)
        got_r.append(lo[keep])
        got_c.append(hi[keep])
        have += int(keep.sum())
        if have >= size:
            break
    r, c = np.concatenate(got_r)[:size], np.concatenate(got_c)[:size]
    if len(r) == 0:
        raise ValueError("could not sample any pair for a non-empty stratum")
    return r, c


def knn_correlation(pairs: PairFn, labels: np.ndarray, neighbors: Neighbors, k: int = 10) -> Optional[float]:
    """Pearson correlation of s and 1[same label] over the unique k-NN pairs only (a local measure)."""
    labels = np.asarray(labels)
    codes = knn_pairs(neighbors, k)
    n = len(labels)
    r, c = codes // n, codes % n
    y = (labels[r] == labels[c]).astype(np.float64)
    s = pairs(r, c).astype(np.float64)
    if len(s) < 2 or y.std() == 0 or s.std() == 0:
        return None
    return float(np.corrcoef(s, y)[0, 1])


@overload
def stratified_correlation(pairs: PairFn, labels: np.ndarray, sample: dict,
                           with_knn: Literal[False] = ...) -> float: ...


@overload
def stratified_correlation(pairs: PairFn, labels: np.ndarray, sample: dict,
                           with_knn: Literal[True]) -> tuple[float, Optional[float]]: ...


def stratified_correlation(pairs: PairFn, labels: np.ndarray, sample: dict,
                           with_knn: bool = False) -> float | tuple[float, Optional[float]]:
    """Pearson correlation of s and 1[same label] estimated from a :func:`sample_strata` sample.

    With ``with_knn`` also returns the k-NN correlation, from the same stratum-A values.
    """
    labels = np.asarray(labels)
    s1 = s2 = sy = 0.0
    knn = None
    for index, (r, c, weight) in enumerate(sample["strata"]):
        if len(r) == 0:
            continue
        s = pairs(r, c).astype(np.float64)
        y = labels[r] == labels[c]
        s1 += weight * s.sum()
        s2 += weight * (s * s).sum()
        sy += weight * s[y].sum()
        if index == 0 and len(s) > 1 and y.std() > 0 and s.std() > 0:
            knn = float(np.corrcoef(s, y.astype(np.float64))[0, 1])
    corr = _pearson(sample["n_pairs"], s1, s2, sy, sample["n_pos"])
    return (corr, knn) if with_knn else corr


def _auc_ap(s: np.ndarray, y: np.ndarray,
            weight: Optional[np.ndarray] = None) -> tuple[Optional[float], Optional[float]]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    if len(s) < 2 or y.all() or not y.any():
        return None, None
    return (float(roc_auc_score(y, s, sample_weight=weight)),
            float(average_precision_score(y, s, sample_weight=weight)))


def rank_measures(pairs: PairFn, labels: np.ndarray, neighbors: Neighbors, k: int = 10,
                  sample: Optional[dict] = None, rank_exact_max: int = 5_000_000) -> dict[str, Optional[float]]:
    """ROC-AUC and average precision of s for 1[same label]: all pairs, and the k-NN pairs.

    Args:
        pairs: the estimator's pair lookup.
        labels: (N,) labels.
        neighbors: the shared k-NN table (the k-NN pairs: j among i's ``k`` nearest or i among j's).
        k: neighbours per point of the k-NN pairs.
        sample: a :func:`sample_strata` sample, used (with its stratum weights) when there are more
            than ``rank_exact_max`` pairs; it is required then.
        rank_exact_max: largest number of pairs scored exactly.

    Returns:
        ``{"auc", "ap", "knn_auc", "knn_ap"}`` (None where a class indicator is constant).
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n * (n - 1) // 2 <= rank_exact_max:
        r, c = np.triu_indices(n, 1)
        auc, ap = _auc_ap(pairs(r, c).astype(np.float64), labels[r] == labels[c])
    else:
        if sample is None:
            raise ValueError("more pairs than rank_exact_max: pass the stratified sample")
        ss, yy, ww = [], [], []
        for r, c, weight in sample["strata"]:
            ss.append(pairs(r, c).astype(np.float64))
            yy.append(labels[r] == labels[c])
            ww.append(np.full(len(r), weight))
        auc, ap = _auc_ap(np.concatenate(ss), np.concatenate(yy), np.concatenate(ww))
    codes = knn_pairs(neighbors, k)
    r, c = codes // n, codes % n
    knn_auc, knn_ap = _auc_ap(pairs(r, c).astype(np.float64), labels[r] == labels[c])
    return {"auc": auc, "ap": ap, "knn_auc": knn_auc, "knn_ap": knn_ap}


def knn_purity_same_size(groups: Optional[Sequence[np.ndarray]], neighbors: Neighbors,
                         labels: np.ndarray) -> Optional[float]:
    """Purity of plain nearest-neighbour groups with the sizes of ``groups``: point i with its
    ``len(groups[i]) − 1`` nearest neighbours for point-centred groups (one per point), else, for
    clusters, the cluster's first member with as many nearest neighbours (capped by the table)."""
    if groups is None:
        return None
    n = neighbors.indices.shape[0]
    point_centred = len(groups) == n
    same = []
    for gi, g in enumerate(groups):
        g = np.asarray(g, dtype=np.int64)
        if len(g) == 0:
            continue
        centre = gi if point_centred else int(g[0])
        row = neighbors.indices[centre]
        row = row[(row >= 0) & (row != centre)][: len(g) - 1]
        same.append(np.r_[centre, row])
    return purity(same, labels)
