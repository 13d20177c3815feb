"""Run several estimators on one labelled embedding set and score each (purity, correlation)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

import numpy as np

from plm.estimators import DEFAULT_ESTIMATORS
from plm.estimators.base import ScaleError, as_features, compute_neighbors
from plm.estimators.quality import (
    exact_correlation,
    knn_correlation,
    knn_purity_same_size,
    mean_group_size,
    purity,
    rank_measures,
    sample_strata,
    stratified_correlation,
)
from plm.utils.deprecation import deprecated_names

log = logging.getLogger(__name__)



def default_options(name: str, n_classes: int) -> dict:
    """Report defaults: clustering peers get as many clusters as there are classes (an oracle count)."""
    if name in ("kmeans", "hierarchical"):
        return {"n_clusters": max(1, n_classes)}
    return {}


def similarity_quality(x: np.ndarray, labels: np.ndarray, estimators: Sequence[str] = DEFAULT_ESTIMATORS,
                       options: Optional[dict[str, dict]] = None, exact_max_pairs: int = 20_000_000,
                       pair_knn: int = 10, n_samples: int = 100_000, seed: int = 0,
                       approximate_knn: bool = False, progress: bool = True) -> dict:
    """Fit every named estimator on ``x`` and measure purity and correlation with ``labels``.

    Args:
        x: (N, d) features (L2-normalised here).
        labels: (N,) ground-truth labels (used only for scoring).
        estimators: registry names.
        options: per-estimator constructor options, merged over :func:`default_options`.
        exact_max_pairs: largest number of pairs N(N−1)/2 scored exactly; beyond, stratified sampling.
        pair_knn: K of the k-NN stratum of the sampled correlation.
        n_samples: pairs sampled per sampled stratum.
        seed: seed of the pair sample (shared by all estimators).
        approximate_knn: approximate (faiss IVF) shared k-NN search instead of exact.
        progress: show progress over estimators (a bar on a terminal, lines in a log).

    Returns:
        ``{"num_points", "correlation_method", "knn_seconds", "knn_cpu_seconds", "estimators": {name:
        {"purity", "correlation", "knn_correlation", "mode", "mean_group_size", "seconds", "cpu_seconds"}
        or {"skipped": reason}}}`` (CPU seconds count every thread of the process).
    """
    from plm.estimators import create_estimator
    from plm.utils.progress import progress as progress_bar

    feats = as_features(x)
    labels = np.asarray(labels)
    if len(labels) != len(feats):
        raise ValueError(f"got {len(feats)} points and {len(labels)} labels")
    n = len(feats)
    n_classes = int(np.unique(labels).size)
    options = options or {}
    built = {name: create_estimator(name, **{**default_options(name, n_classes), **options.get(name, {})})
             for name in estimators}
    k_needed = max([pair_knn] + [e.needs_neighbors for e in built.values()])
    start, cpu = time.perf_counter(), time.process_time()
    neighbors = compute_neighbors(feats, min(k_needed, n - 1), approximate=approximate_knn)
    knn_seconds, knn_cpu = time.perf_counter() - start, time.process_time() - cpu
    exact = n * (n - 1) / 2 <= exact_max_pairs
    rank_exact_max = 5_000_000
    need_sample = not exact or n * (n - 1) / 2 > rank_exact_max
    sample = (sample_strata(labels, neighbors, k=min(pair_knn, n - 1), n_samples=n_samples, seed=seed)
              if need_sample else None)
    results: dict[str, dict] = {}
    for name, est in progress_bar(built.items(), desc="estimators", unit="est", disable=not progress, leave=False):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            est.fit(feats, neighbors=neighbors)
        except ScaleError as err:
            log.warning("%s: skipped (%s)", name, err)
            results[name] = {"purity": None, "correlation": None, "skipped": str(err)}
            continue
        fit_seconds = time.perf_counter() - start
        if exact:
            corr = exact_correlation(est.pair_similarity, labels)
            knn_corr = knn_correlation(est.pair_similarity, labels, neighbors, k=min(pair_knn, n - 1))
        else:
            assert sample is not None  # need_sample holds whenever not exact
            corr, knn_corr = stratified_correlation(est.pair_similarity, labels, sample, with_knn=True)
        ranks = rank_measures(est.pair_similarity, labels, neighbors, k=min(pair_knn, n - 1), sample=sample,
                              rank_exact_max=rank_exact_max)
        results[name] = {
            **ranks,
            "purity": purity(est.groups_, labels),
            "knn_purity_same_size": knn_purity_same_size(est.groups_, neighbors, labels),
            "correlation": None if np.isnan(corr) else corr,
            "knn_correlation": knn_corr,
            "mode": est.mode_,
            "mean_group_size": mean_group_size(est.groups_),
            "seconds": round(time.perf_counter() - start, 3),
            "fit_seconds": round(fit_seconds, 3),
            "cpu_seconds": round(time.process_time() - cpu, 3),
        }
    return {"num_points": n, "num_classes": n_classes, "correlation_method": "exact" if exact else "stratified",
            "knn_seconds": round(knn_seconds, 3), "knn_cpu_seconds": round(knn_cpu, 3), "estimators": results}


def neighborhood_batches(neighbors_indices: np.ndarray, batch_size: int = 120, k: int = 5, num_batches: int = 50,
                         seed: int = 0) -> list[np.ndarray]:
    """Batches as the trainer samples them: ``batch_size / k`` random seeds, each followed by its
    ``k − 1`` nearest neighbours (positions into the point set; a point may occur twice)."""
    n = neighbors_indices.shape[0]
    if batch_size % k or batch_size < k:
        raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of k ({k})")
    seeds_per = batch_size // k
    if seeds_per > n:
        raise ValueError(f"{seeds_per} seeds per batch but only {n} points")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_batches):
        seeds = rng.choice(n, size=seeds_per, replace=False)
        groups = np.concatenate([seeds[:, None], neighbors_indices[seeds, : k - 1]], axis=1)
        out.append(groups.reshape(-1))
    return out


def top1_precision(sims: np.ndarray, rows: np.ndarray, cols: np.ndarray, labels: np.ndarray) -> float:
    """The share of points whose most similar other point (by the pair similarities ``sims`` of the
    pairs ``rows`` < ``cols`` of ``len(labels)`` points) has their label: the precision of the
    partner a similarity-weighted loss pulls hardest. Ties go to the lower index."""
    n = len(labels)
    full = np.full((n, n), -np.inf)
    full[rows, cols] = sims
    full[cols, rows] = sims
    return float(np.mean(labels[np.argmax(full, axis=1)] == labels))


def _uses_seed_groups(estimator: object) -> bool:
    """Whether an estimator draws its PL candidates from the batch's seed groups (``group_size``)."""
    config = getattr(estimator, "config", None)
    return getattr(config, "group_size", None) is not None


def batch_quality(x: np.ndarray, labels: np.ndarray, estimators: Sequence[str] = DEFAULT_ESTIMATORS,
                  options: Optional[dict[str, dict]] = None, batch_size: int = 120, k: int = 5,
                  num_batches: int = 50, seed: int = 0, progress: bool = True,
                  reference: Optional[str] = None) -> dict:
    """Every estimator where the training target is made: on neighbourhood-sampled batches.

    Each batch (:func:`neighborhood_batches` over the exact k-NN table of ``x``) is given to every
    estimator on its own; ROC-AUC and average precision of its similarity for the same-class
    indicator are computed over the batch's pairs (duplicate points excluded) and averaged over the
    batches where both classes of pairs occur, with the top-1 precision of the same pairs
    (:func:`top1_precision`). A PL estimator whose config has ``group_size``
    (candidates from the anchor's seed group, ``group_size`` = ``k``) is fitted on the batch as
    drawn, duplicates and group order kept, and scored on the same pairs. Clustering peers get as
    many clusters as the batch has classes (an oracle count, as in the whole-split mode).

    For estimators with groups (clusters, k-reciprocal sets, selected PL neighbourhoods) the
    groups' purity (majority-label share of groups of two or more) and mean size are averaged over
    the same batches; ``None`` for the others.

    Every estimator is also compared with ``reference`` (``"plm"`` when it is scored, else the first
    estimator) batch by batch: the mean paired difference of AUC and AP (estimator − reference) over
    the batches both scored, with its standard error (SD of the differences over √n; ``None`` below
    two batches). The estimators see the same batches, so these differences are far less noisy than
    the per-estimator SDs over batches suggest.

    Returns:
        ``{"regime": "batch", "num_points", "num_batches", "batch_size", "k", "reference", "estimators":
        {name: {"auc", "ap", "auc_std", "ap_std", "batches", "top1", "purity", "mean_group_size", "auc_diff",
        "auc_diff_se", "ap_diff", "ap_diff_se"}}}``.
    """
    from plm.estimators import create_estimator
    from plm.estimators.quality import _auc_ap
    from plm.utils.progress import progress as progress_bar

    feats = as_features(x)
    labels = np.asarray(labels)
    if len(labels) != len(feats):
        raise ValueError(f"got {len(feats)} points and {len(labels)} labels")
    neighbors = compute_neighbors(feats, min(k - 1, len(feats) - 1) if k > 1 else 1)
    batches = neighborhood_batches(neighbors.indices, batch_size, k, num_batches, seed)
    if reference is not None and reference not in estimators:
        raise ValueError(f"reference {reference!r} is not among the estimators {list(estimators)}")
    reference = reference or ("plm" if "plm" in estimators else (estimators[0] if len(estimators) else None))
    options = options or {}
    scores: dict[str, dict[int, tuple[float, float]]] = {name: {} for name in estimators}
    top1: dict[str, list[float]] = {name: [] for name in estimators}
    groups: dict[str, list[tuple[float, float]]] = {name: [] for name in estimators}
    for index, b in enumerate(progress_bar(batches, total=len(batches), desc="batches", unit="batch",
                                           disable=not progress)):
        drawn = b
        b, first = np.unique(drawn, return_index=True)  # a point drawn twice would make a trivially similar pair
        xb, yb = feats[b], labels[b]
        r, c = np.triu_indices(len(b), 1)
        y = yb[r] == yb[c]
        if y.all() or not y.any():
            continue
        n_classes = int(np.unique(yb).size)
        for name in estimators:
            est = create_estimator(name, **{**default_options(name, n_classes),
                                            **{kk: v for kk, v in options.get(name, {}).items()
                                               if kk not in ("n_clusters", "dense_max")}})
            if _uses_seed_groups(est):  # fitted on the batch as drawn, in seed-group order (as in training)
                est.fit(feats[drawn])
                sims, group_labels = est.pair_similarity(first[r], first[c]), labels[drawn]
            else:
                est.fit(xb)
                sims, group_labels = est.pair_similarity(r, c), yb
            sims = sims.astype(np.float64)
            auc, ap = _auc_ap(sims, y)
            if auc is not None and ap is not None:  # both or neither
                scores[name][index] = (auc, ap)
                top1[name].append(top1_precision(sims, r, c, yb))
                share, size = purity(est.groups_, group_labels), mean_group_size(est.groups_)
                if share is not None and size is not None:
                    groups[name].append((share, size))
    results = {}
    for name, scored in scores.items():
        arr = np.asarray(list(scored.values())) if scored else np.zeros((0, 2))
        results[name] = {"auc": float(arr[:, 0].mean()) if len(arr) else None,
                         "ap": float(arr[:, 1].mean()) if len(arr) else None,
                         "auc_std": float(arr[:, 0].std()) if len(arr) else None,
                         "ap_std": float(arr[:, 1].std()) if len(arr) else None, "batches": len(arr),
                         "top1": float(np.mean(top1[name])) if top1[name] else None}
        grp = np.asarray(groups[name]) if groups[name] else None
        results[name].update(purity=float(grp[:, 0].mean()) if grp is not None else None,
                             mean_group_size=float(grp[:, 1].mean()) if grp is not None else None)
        results[name].update(_paired_difference(scored, scores[reference] if reference is not None else {}))
    return {"regime": "batch", "num_points": len(feats), "num_batches": len(batches), "batch_size": batch_size,
            "k": k, "reference": reference, "estimators": results}


def _paired_difference(scored: dict[int, tuple[float, float]],
                       reference: dict[int, tuple[float, float]]) -> dict[str, Optional[float]]:
    """Mean (AUC, AP) difference over the batches both scored, and its standard error."""
    common = sorted(set(scored) & set(reference))
    out: dict[str, Optional[float]] = {}
    diff = np.asarray([np.subtract(scored[i], reference[i]) for i in common]).reshape(-1, 2)
    for col, key in enumerate(("auc", "ap")):
        out[f"{key}_diff"] = float(diff[:, col].mean()) if len(diff) else None
        out[f"{key}_diff_se"] = float(diff[:, col].std(ddof=1) / np.sqrt(len(diff))) if len(diff) >= 2 else None
    return out


if not TYPE_CHECKING:  # old spellings, kept for one release; the type checker sees only the new names
    __getattr__ = deprecated_names(__name__, {"neighbourhood_batches": "neighborhood_batches"})
