"""Rank measures of the similarity report against scikit-learn, size-matched purity, and the batch regime."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from plm.estimators import create_estimator
from plm.estimators.base import as_features, compute_neighbors
from plm.estimators.quality import knn_purity_same_size, rank_measures, sample_strata
from plm.estimators.report import batch_quality, neighborhood_batches, top1_precision


def _data(seed: int = 0, n: int = 60):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=n)
    x = rng.normal(size=(n, 5)) + labels[:, None] * 0.8
    return x.astype(np.float32), labels


def test_rank_measures_match_sklearn_on_all_and_knn_pairs() -> None:
    x, labels = _data()
    n = len(x)
    s = np.random.default_rng(1).uniform(size=(n, n))
    s = 0.5 * (s + s.T)
    pairs = lambda r, c: s[r, c]  # noqa: E731
    neighbors = compute_neighbors(x, 10)
    got = rank_measures(pairs, labels, neighbors, k=10)
    r, c = np.triu_indices(n, 1)
    y = labels[r] == labels[c]
    assert got["auc"] == pytest.approx(roc_auc_score(y, s[r, c]))
    assert got["ap"] == pytest.approx(average_precision_score(y, s[r, c]))
    knn = {(min(i, int(j)), max(i, int(j))) for i in range(n) for j in neighbors.indices[i, :10] if j != i}
    kr, kc = np.array(sorted(knn)).T
    assert got["knn_auc"] == pytest.approx(roc_auc_score(labels[kr] == labels[kc], s[kr, kc]))
    assert got["knn_ap"] == pytest.approx(average_precision_score(labels[kr] == labels[kc], s[kr, kc]))


def test_rank_measures_ignore_a_monotone_rescaling() -> None:
    x, labels = _data(2)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    neighbors = compute_neighbors(x, 10)
    a = rank_measures(lambda r, c: np.exp(-d[r, c]), labels, neighbors)
    b = rank_measures(lambda r, c: np.exp(-d[r, c]) ** 4, labels, neighbors)
    assert a == pytest.approx(b)


def test_stratified_rank_measures_are_close_to_exact() -> None:
    x, labels = _data(3, n=300)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    pairs = lambda r, c: -d[r, c]  # noqa: E731
    neighbors = compute_neighbors(x, 10)
    exact = rank_measures(pairs, labels, neighbors)
    sample = sample_strata(labels, neighbors, k=10, n_samples=20_000, seed=0)
    approx = rank_measures(pairs, labels, neighbors, sample=sample, rank_exact_max=10)
    assert approx["auc"] == pytest.approx(exact["auc"], abs=0.01)
    assert approx["ap"] == pytest.approx(exact["ap"], abs=0.02)


def test_knn_purity_same_size_uses_each_groups_size() -> None:
    labels = np.array([0, 0, 1, 1, 0])
    indices = np.array([[1, 4, 2, 3], [0, 4, 2, 3], [3, 0, 1, 4], [2, 0, 1, 4], [0, 1, 2, 3]])
    from plm.estimators.base import Neighbors

    nb = Neighbors(indices=indices, distances=np.zeros(indices.shape, dtype=np.float32))
    groups = [np.array([0, 1]), np.array([1, 0, 4, 2]), np.array([2]), np.array([3, 2]), np.array([4, 0])]
    # point groups: {0,1} 1.0, {1,0,4,2} 0.75, {2} skipped, {3,2} 1.0, {4,0} 1.0
    assert knn_purity_same_size(groups, nb, labels) == pytest.approx((1 + 0.75 + 1 + 1) / 4)


def test_batches_hold_each_seeds_neighbours() -> None:
    x, _ = _data(4, n=80)
    neighbors = compute_neighbors(x, 4)
    batches = neighborhood_batches(neighbors.indices, batch_size=20, k=5, num_batches=6, seed=0)
    assert len(batches) == 6
    for b in batches:
        groups = b.reshape(-1, 5)
        assert len(set(groups[:, 0])) == 4  # distinct seeds
        for g in groups:
            assert list(g[1:]) == list(neighbors.indices[g[0], :4])


def test_batch_quality_scores_every_estimator() -> None:
    x, labels = _data(5, n=120)
    out = batch_quality(x, labels, ["gaussian", "plm", "kmeans"], batch_size=40, k=4, num_batches=4, progress=False)
    assert out["regime"] == "batch" and set(out["estimators"]) == {"gaussian", "plm", "kmeans"}
    for r in out["estimators"].values():
        assert r["batches"] >= 1 and 0.5 < r["auc"] <= 1.0 and 0.0 < r["ap"] <= 1.0


def test_batch_quality_reports_group_purity_and_size_averaged_over_batches() -> None:
    x, labels = _data(5, n=120)
    out = batch_quality(x, labels, ["gaussian", "plm", "kmeans"], batch_size=40, k=4, num_batches=4, progress=False)
    gauss, pl, km = (out["estimators"][n] for n in ("gaussian", "plm", "kmeans"))
    assert gauss["purity"] is None and gauss["mean_group_size"] is None  # no groups
    # recompute PL's figures batch by batch, the obviously-correct way
    feats = as_features(x)  # L2-normalised, as the report sees them
    batches = neighborhood_batches(compute_neighbors(feats, 3).indices, 40, 4, 4, 0)
    shares, sizes = [], []
    for b in batches:
        b = np.unique(b)
        same = labels[b][:, None] == labels[b][None, :]
        if same[np.triu_indices(len(b), 1)].all() or not same[np.triu_indices(len(b), 1)].any():
            continue  # the report skips batches with one kind of pair only
        est = create_estimator("plm").fit(feats[b])
        groups = [g for g in est.groups_ if len(g) >= 2]
        shares.append(np.mean([np.bincount(labels[b][g]).max() / len(g) for g in groups]))
        sizes.append(np.mean([len(g) for g in est.groups_]))
    assert pl["purity"] == pytest.approx(np.mean(shares))
    assert pl["mean_group_size"] == pytest.approx(np.mean(sizes))
    assert 0.0 < km["purity"] <= 1.0 and km["mean_group_size"] >= 1.0


def test_batch_quality_paired_differences_match_a_batch_by_batch_recomputation() -> None:
    x, labels = _data(6, n=120)
    out = batch_quality(x, labels, ["gaussian", "plm"], batch_size=40, k=4, num_batches=5, progress=False)
    assert out["reference"] == "plm"  # plm is the default reference when it is scored
    feats = as_features(x)
    batches = neighborhood_batches(compute_neighbors(feats, 3).indices, 40, 4, 5, 0)
    diffs = []
    for b in batches:
        b = np.unique(b)
        r, c = np.triu_indices(len(b), 1)
        same = labels[b][r] == labels[b][c]
        if same.all() or not same.any():
            continue
        per = {}
        for name in ("gaussian", "plm"):
            s = create_estimator(name).fit(feats[b]).pair_similarity(r, c).astype(np.float64)
            per[name] = (roc_auc_score(same, s), average_precision_score(same, s))
        diffs.append(np.subtract(per["gaussian"], per["plm"]))
    diffs = np.asarray(diffs)
    assert len(diffs) >= 2
    gauss, pl = out["estimators"]["gaussian"], out["estimators"]["plm"]
    assert gauss["auc_diff"] == pytest.approx(diffs[:, 0].mean())
    assert gauss["ap_diff"] == pytest.approx(diffs[:, 1].mean())
    assert gauss["auc_diff_se"] == pytest.approx(diffs[:, 0].std(ddof=1) / np.sqrt(len(diffs)))
    assert gauss["ap_diff_se"] == pytest.approx(diffs[:, 1].std(ddof=1) / np.sqrt(len(diffs)))
    assert gauss["ap_diff"] == pytest.approx(gauss["ap"] - pl["ap"])  # same batches scored by both
    assert pl["ap_diff"] == 0.0 and pl["ap_diff_se"] == 0.0


def test_batch_quality_fits_seed_group_candidates_on_the_batch_as_drawn() -> None:
    from plm.manifold import ManifoldConfig

    x, labels = _data(6, n=120)
    cfg = ManifoldConfig(group_size=4)
    out = batch_quality(x, labels, ["plm"], options={"plm": {"config": cfg}}, batch_size=40, k=4, num_batches=4,
                        progress=False)
    feats = as_features(x)
    aucs, shares = [], []
    for drawn in neighborhood_batches(compute_neighbors(feats, 3).indices, 40, 4, 4, 0):
        b, first = np.unique(drawn, return_index=True)
        r, c = np.triu_indices(len(b), 1)
        same = labels[b][r] == labels[b][c]
        if same.all() or not same.any():
            continue
        est = create_estimator("plm", config=cfg).fit(feats[drawn])  # 40 points in seed-group order
        assert all(j // 4 == i // 4 for i, g in enumerate(est.groups_) for j in g)  # candidates from the group
        aucs.append(roc_auc_score(same, est.pair_similarity(first[r], first[c]).astype(np.float64)))
        groups = [g for g in est.groups_ if len(g) >= 2]
        shares.append(np.mean([np.bincount(labels[drawn][g]).max() / len(g) for g in groups]))
    pl = out["estimators"]["plm"]
    assert pl["auc"] == pytest.approx(np.mean(aucs)) and pl["purity"] == pytest.approx(np.mean(shares))
    assert pl["mean_group_size"] <= 4.0


def test_batch_quality_reference_is_chosen_or_checked() -> None:
    x, labels = _data(6, n=120)
    out = batch_quality(x, labels, ["gaussian", "kmeans"], batch_size=40, k=4, num_batches=2, progress=False)
    assert out["reference"] == "gaussian"  # no plm: the first estimator
    out = batch_quality(x, labels, ["gaussian", "plm"], batch_size=40, k=4, num_batches=2, progress=False,
                        reference="gaussian")
    assert out["estimators"]["gaussian"]["auc_diff"] == 0.0
    with pytest.raises(ValueError, match="reference"):
        batch_quality(x, labels, ["gaussian"], batch_size=40, k=4, num_batches=1, progress=False, reference="plm")


def test_top1_precision_is_the_explicit_loop_over_points() -> None:
    rng = np.random.default_rng(3)
    for n in (2, 5, 12):
        labels = rng.integers(0, 3, n)
        rows, cols = np.triu_indices(n, 1)
        sims = rng.integers(0, 4, len(rows)).astype(float) / 4  # ties: the lower index wins
        expected = []
        for i in range(n):
            best_j, best = -1, -np.inf
            for j in range(n):
                if j == i:
                    continue
                s = sims[(rows == min(i, j)) & (cols == max(i, j))][0]
                if s > best:
                    best_j, best = j, s
            expected.append(labels[best_j] == labels[i])
        assert top1_precision(sims, rows, cols, labels) == pytest.approx(np.mean(expected))


def test_batch_quality_reports_the_top1_precision_of_every_estimator() -> None:
    x, labels = _data(5, n=120)
    out = batch_quality(x, labels, ["gaussian", "plm"], batch_size=40, k=4, num_batches=4, progress=False)
    for r in out["estimators"].values():
        assert 0.0 <= r["top1"] <= 1.0
