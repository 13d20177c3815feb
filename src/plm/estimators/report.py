"""Run several estimators on one labelled embedding set and score each (purity, correlation)."""

from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

import numpy as np

from plm.estimators.base import ScaleError, as_features, compute_neighbors
from plm.estimators.quality import (
    exact_correlation,
    knn_correlation,
    mean_group_size,
    purity,
    sample_strata,
    stratified_correlation,
)

log = logging.getLogger(__name__)

DEFAULT_ESTIMATORS = ("kmeans", "hierarchical", "random_walk", "gaussian", "stml", "plm")


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
    sample = None if exact else sample_strata(labels, neighbors, k=min(pair_knn, n - 1), n_samples=n_samples, seed=seed)
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
            corr, knn_corr = stratified_correlation(est.pair_similarity, labels, sample, with_knn=True)
        results[name] = {
            "purity": purity(est.groups_, labels),
            "correlation": None if np.isnan(corr) else corr,
            "knn_correlation": knn_corr,
            "mode": est.mode_,
            "mean_group_size": mean_group_size(est.groups_),
            "seconds": round(time.perf_counter() - start, 3),
            "fit_seconds": round(fit_seconds, 3),
            "cpu_seconds": round(time.process_time() - cpu, 3),
        }
        if name == "plm":  # does subset selection beat plain nearest neighbours of the same sizes?
            same_size = [np.r_[i, neighbors.indices[i, :len(g) - 1]] for i, g in enumerate(est.groups_)]
            results[name]["knn_purity_same_size"] = purity(same_size, labels)
    return {"num_points": n, "num_classes": n_classes, "correlation_method": "exact" if exact else "stratified",
            "knn_seconds": round(knn_seconds, 3), "knn_cpu_seconds": round(knn_cpu, 3), "estimators": results}
