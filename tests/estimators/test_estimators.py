"""Similarity estimators: one interface, shapes and ranges, dense vs sparse agreement, quality measures."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from plm.estimators import (
    ESTIMATORS,
    GaussianEstimator,
    HierarchicalEstimator,
    KMeansEstimator,
    PLManifoldEstimator,
    RandomWalkEstimator,
    ScaleError,
    STMLEstimator,
    as_features,
    compute_neighbors,
    create_estimator,
    kmeans_pseudo_labels,
    stml_similarity,
)
from plm.estimators.quality import exact_correlation, purity, sample_strata, stratified_correlation
from plm.estimators.report import similarity_quality


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """Six well-separated Gaussian blobs of 40 points in 16-D."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16)) * 3
    labels = np.repeat(np.arange(6), 40)
    return (centres[labels] + rng.normal(size=(240, 16)) * 0.6).astype(np.float32), labels


def _make(name: str, **kw) -> object:
    if name in ("kmeans", "hierarchical"):
        kw.setdefault("n_clusters", 6)
    return create_estimator(name, **kw)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_dense_output_shape_range_and_pairs(name: str, blobs) -> None:
    x, y = blobs
    est = _make(name).fit(x)
    s = est.similarity()
    assert isinstance(s, np.ndarray) and s.shape == (240, 240) and s.dtype == np.float32
    assert np.isfinite(s).all() and s.min() >= 0 and s.max() <= 1 + 1e-6
    np.testing.assert_allclose(s, s.T, atol=1e-6)
    rows, cols = np.array([0, 5, 100, 7]), np.array([3, 5, 200, 239])
    np.testing.assert_allclose(est.pair_similarity(rows, cols), s[rows, cols], atol=1e-6)
    if est.groups_ is not None:
        members = np.concatenate(est.groups_)
        assert members.min() >= 0 and members.max() < 240
    # well-separated blobs: every estimator ranks same-blob pairs above the others
    iu = np.triu_indices(240, 1)
    same = y[iu[0]] == y[iu[1]]
    assert s[iu][same].mean() > s[iu][~same].mean()


@pytest.mark.parametrize("name", [n for n in ESTIMATORS if n != "hierarchical"])
def test_sparse_mode_is_bounded_and_consistent(name: str, blobs) -> None:
    x, y = blobs
    nb = compute_neighbors(as_features(x), 16)
    dense = _make(name).fit(x, neighbors=nb)
    sparse = _make(name, dense_max=100).fit(x, neighbors=nb)
    assert dense.mode_ == "dense" and sparse.mode_ == "sparse"
    s = sparse.similarity()
    assert sp.issparse(s) and s.shape == (240, 240)
    assert s.nnz <= 240 * 40
    assert s.data.min() >= 0 and s.data.max() <= 1 + 1e-6
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(0, 240, 500), rng.integers(0, 240, 500)
    if name != "random_walk":  # defined for every pair: sparse mode evaluates the same values
        np.testing.assert_allclose(sparse.pair_similarity(rows, cols), dense.pair_similarity(rows, cols), atol=1e-4)
    # correlation of the sparse mode (stratified sample) close to the exact dense one
    exact = exact_correlation(dense.pair_similarity, y)
    sample = sample_strata(y, nb, k=10, n_samples=5000, seed=0)
    approx = stratified_correlation(sparse.pair_similarity, y, sample)
    tol = 0.25 if name == "random_walk" else 0.03
    assert abs(exact - approx) < tol


def test_hierarchical_refuses_large_inputs(blobs) -> None:
    with pytest.raises(ScaleError, match="skipped"):
        HierarchicalEstimator(n_clusters=6, dense_max=100).fit(blobs[0])


def test_hierarchical_grades_by_merge_level(blobs) -> None:
    x, y = blobs
    est = HierarchicalEstimator(n_clusters=6).fit(x)
    assert purity(est.groups_, y) == 1.0
    s = est.similarity()
    assert np.allclose(np.diag(s), 1) and s.min() == pytest.approx(0.0)
    ranked = HierarchicalEstimator(n_clusters=6, grade="rank", linkage="average").fit(x).similarity()
    assert ranked.shape == s.shape and ranked.min() == pytest.approx(0.0)


def test_stml_matches_the_authors_loop() -> None:
    """The vectorised W against a transcription of the authors' per-row loop."""
    t = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    k, sigma = 5, 3.0
    got = stml_similarity(t, sigma=sigma, k=k)
    tn = torch.nn.functional.normalize(t)
    w_p = torch.exp(-torch.cdist(tn, tn).pow(2) / sigma)
    topk = torch.topk(w_p, k)[1]
    half = topk[:, :int(np.around(k / 2))]
    w_nn = torch.zeros_like(w_p).scatter_(1, topk, torch.ones_like(w_p))
    v = ((w_nn + w_nn.t()) / 2 == 1).float()
    w_c_tilde = torch.zeros_like(w_p)
    for i in range(len(t)):
        nz = torch.where(v[i] != 0)[0]
        w_c_tilde[i, nz] = (v[:, nz].sum(1) / len(nz))[nz]
    w_c_hat = w_c_tilde[half].mean(1)
    want = (w_p + (w_c_hat + w_c_hat.t()) / 2) / 2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # and the sparse estimator computes the same matrix
    np.testing.assert_allclose(STMLEstimator(sigma=sigma, k=k).fit(t.numpy()).similarity(), want.numpy(), atol=1e-5)


def test_kmeans_pseudo_labels(blobs) -> None:
    x, y = blobs
    labels = kmeans_pseudo_labels(x, 6, seed=0)
    assert labels.shape == (240,) and set(labels.tolist()) == set(range(6))
    np.testing.assert_array_equal(labels, kmeans_pseudo_labels(x, 6, seed=0))
    assert purity([np.flatnonzero(labels == c) for c in range(6)], y) == 1.0
    est = KMeansEstimator(n_clusters=6).fit(x)
    assert set(np.unique(est.similarity())) == {0.0, 1.0}


def test_random_walk_follows_the_manifold() -> None:
    """Two concentric circles: diffusion links far points of one circle above near points across."""
    t = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    inner = np.c_[np.cos(t), np.sin(t), np.ones_like(t) * 3]
    outer = np.c_[1.3 * np.cos(t + 0.02), 1.3 * np.sin(t + 0.02), np.ones_like(t) * 3]
    x = np.r_[inner, outer]
    est = RandomWalkEstimator(k=4).fit(x)
    s = est.similarity()
    assert s[0, 10] > s[0, 120]  # 10 steps along its own circle vs the nearest point of the other


@pytest.mark.parametrize("bad", [dict(n_clusters=0), dict(n_clusters=2.5)])
def test_kmeans_rejects_bad_options(bad: dict, blobs) -> None:
    with pytest.raises(ValueError):  # at fit time: __init__ only stores parameters (scikit-learn's rule)
        KMeansEstimator(**bad).fit(blobs[0])


@pytest.mark.parametrize("cls,bad", [(HierarchicalEstimator, dict(linkage="median")),
                                     (HierarchicalEstimator, dict(grade="x")),
                                     (RandomWalkEstimator, dict(alpha=1.0)), (RandomWalkEstimator, dict(k=0)),
                                     (STMLEstimator, dict(sigma=0)), (STMLEstimator, dict(k=0)),
                                     (GaussianEstimator, dict(sigma=-1.0)), (PLManifoldEstimator, dict(config="x")),
                                     (PLManifoldEstimator, dict(dense_max=1))])
def test_constructors_reject_bad_options(cls, bad: dict, blobs) -> None:
    with pytest.raises(ValueError):  # at fit time: __init__ only stores parameters (scikit-learn's rule)
        cls(**bad).fit(blobs[0])


def test_registry_and_input_validation(blobs) -> None:
    with pytest.raises(ValueError, match="unknown estimator"):
        create_estimator("nope")
    with pytest.raises(ValueError, match="bad options"):
        create_estimator("gaussian", bogus=1)
    with pytest.raises(ValueError, match="2-D"):
        GaussianEstimator().fit(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        GaussianEstimator().fit(np.array([[0.0, np.nan], [1.0, 1.0], [2.0, 0.0]]))
    with pytest.raises(RuntimeError, match="not fitted"):
        GaussianEstimator().similarity()


def test_purity_and_correlation_definitions() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    assert purity([np.array([0, 1, 3]), np.array([3, 4]), np.array([5])], labels) == pytest.approx((2 / 3 + 1) / 2)
    assert purity(None, labels) is None
    # a perfect similarity correlates 1, its negation −1
    same = (labels[:, None] == labels[None, :]).astype(np.float32)
    assert exact_correlation(lambda r, c: same[r, c], labels) == pytest.approx(1.0)
    assert exact_correlation(lambda r, c: 1 - same[r, c], labels) == pytest.approx(-1.0)
    # explicit loop over pairs i < j
    rng = np.random.default_rng(0)
    s = rng.random((6, 6)).astype(np.float32)
    s = (s + s.T) / 2
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    want = np.corrcoef([s[i, j] for i, j in pairs], [float(labels[i] == labels[j]) for i, j in pairs])[0, 1]
    assert exact_correlation(lambda r, c: s[r, c], labels) == pytest.approx(want, abs=1e-6)


def test_knn_correlation_is_pearson_over_neighbour_pairs() -> None:
    from plm.estimators.quality import knn_correlation, knn_pairs

    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 60)
    nb = compute_neighbors(as_features(x), 5)
    s = rng.random((60, 60))
    s = (s + s.T) / 2
    pairs = {(min(i, int(j)), max(i, int(j))) for i in range(60) for j in nb.indices[i, :5]}
    assert len(pairs) == len(knn_pairs(nb, 5))
    want = np.corrcoef([s[i, j] for i, j in sorted(pairs)],
                       [float(labels[i] == labels[j]) for i, j in sorted(pairs)])[0, 1]
    assert knn_correlation(lambda r, c: s[r, c], labels, nb, k=5) == pytest.approx(want)


def test_stratified_correlation_is_close_to_exact() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, 900)
    x = rng.normal(size=(900, 8)).astype(np.float32) + labels[:, None] * 0.05
    nb = compute_neighbors(as_features(x), 16)
    est = GaussianEstimator().fit(x, neighbors=nb)
    exact = exact_correlation(est.pair_similarity, labels)
    approx = stratified_correlation(est.pair_similarity, labels, sample_strata(labels, nb, n_samples=20000, seed=3))
    assert abs(exact - approx) < 0.02


def test_similarity_quality_report(blobs) -> None:
    x, y = blobs
    out = similarity_quality(x, y, progress=False, options={"hierarchical": {"dense_max": 100}})
    assert out["num_points"] == 240 and out["correlation_method"] == "exact"
    assert "skipped" in out["estimators"]["hierarchical"]
    for name in ("kmeans", "random_walk", "gaussian", "stml", "plm"):
        r = out["estimators"][name]
        assert -1 <= r["correlation"] <= 1
        assert r["knn_correlation"] is None or -1 <= r["knn_correlation"] <= 1
        assert (r["purity"] is None) == (name in ("random_walk", "gaussian"))
    assert 0 < out["estimators"]["plm"]["knn_purity_same_size"] <= 1
    sampled = similarity_quality(x, y, estimators=["plm", "gaussian"], exact_max_pairs=100, progress=False)
    assert sampled["correlation_method"] == "stratified"
    for name in ("plm", "gaussian"):
        assert abs(sampled["estimators"][name]["correlation"] - out["estimators"][name]["correlation"]) < 0.03


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimators_pass_sklearn_clone_and_params_round_trip(name: str, blobs) -> None:
    from sklearn.base import clone

    est = _make(name, dense_max=1000)
    params = est.get_params()
    assert params["dense_max"] == 1000 and set(params) == set(type(est)().get_params())
    twin = clone(est)
    assert type(twin) is type(est) and twin is not est and twin.get_params() == params
    assert type(est)(**params).get_params() == params
    # set_params changes what fit uses; the clone of a fitted estimator is unfitted and fits the same way
    est.set_params(dense_max=500)
    assert est.get_params()["dense_max"] == 500
    fitted = est.fit(blobs[0])
    assert fitted.mode_ == "dense" and clone(fitted).mode_ is None
    np.testing.assert_allclose(clone(fitted).fit(blobs[0]).similarity(), fitted.similarity(), atol=1e-6)


@pytest.mark.parametrize("name,bad,message", [
    ("kmeans", dict(n_clusters=0), "n_clusters must be an integer >= 1"),
    ("hierarchical", dict(linkage="median"), "linkage must be one of"),
    ("random_walk", dict(alpha=1.0), r"alpha must be in \(0, 1\)"),
    ("stml", dict(sigma=0), "sigma must be a positive number"),
    ("gaussian", dict(k=0), "k must be an integer >= 1"),
    ("plm", dict(config="x"), "config must be a ManifoldConfig"),
    ("plm", dict(dense_max=1), "dense_max must be an integer >= 2"),
])
def test_bad_parameters_are_stored_then_rejected_clearly(name: str, bad: dict, message: str, blobs) -> None:
    cls = ESTIMATORS.get(name)
    est = cls(**bad)  # stored as given, as clone() requires
    assert all(est.get_params()[k] == v for k, v in bad.items())
    with pytest.raises(ValueError, match=message):
        est.fit(blobs[0])
    with pytest.raises(ValueError, match=message):  # the factory checks at once, before any work
        create_estimator(name, **bad)
