"""Retrieval metrics and exact k-NN against explicit loops, pytorch-metric-learning and faiss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from plm.evaluation import knn, map_and_r_precision, neighbor_hits, nmi, recall_at_k, retrieval_metrics
from plm.evaluation.metrics import NO_HIT, query_ranks
from plm.evaluation.symmetric import class_pair_distances, key_index, key_value, order_keys, symmetric_scan
from plm.neighbors.exact import has_duplicate_rows, smallest_k

# ---------------------------------------------------------------- explicit references

def ref_neighbours(x: np.ndarray) -> list[list[int]]:
    """For each i, every other index ordered by (exact squared distance, index)."""
    x = x.astype(np.float64)
    out = []
    for i in range(len(x)):
        d = [(float(((x[i] - x[j]) ** 2).sum()), j) for j in range(len(x)) if j != i]
        out.append([j for _, j in sorted(d)])
    return out


def ref_metrics(x: np.ndarray, labels: np.ndarray, ks) -> dict:
    """Recall@K, MAP@R, R-precision by explicit loops over queries and ranks."""
    order = ref_neighbours(x)
    valid = [i for i in range(len(x)) if (labels == labels[i]).sum() > 1]  # singletons are left out
    recall = {}
    for k in ks:
        hits = 0
        for i in valid:
            if any(labels[j] == labels[i] for j in order[i][:k]):
                hits += 1
        recall[str(k)] = hits / len(valid) if valid else math.nan
    aps, rps = [], []
    for i, nb in enumerate(order):
        r = int((labels == labels[i]).sum()) - 1
        if r == 0:
            continue
        correct, ap = 0, 0.0
        for rank, j in enumerate(nb[:r], start=1):
            if labels[j] == labels[i]:
                correct += 1
                ap += correct / rank
        aps.append(ap / r)
        rps.append(correct / r)
    return {"recall_at": recall, "map_at_r": float(np.mean(aps)) if aps else math.nan,
            "r_precision": float(np.mean(rps)) if rps else math.nan}


def scan(x: np.ndarray, labels: np.ndarray, ks, symmetric: bool, block_size=None) -> dict:
    """Our metrics through one scan or the other."""
    qr = query_ranks(x, labels, max_k=max(ks), block_size=block_size, symmetric=symmetric)
    return {"recall_at": qr.recall_at(ks), "map_at_r": qr.map_at_r(), "r_precision": qr.mean_r_precision()}


def assert_same(ours: dict, ref: dict) -> None:
    assert ours["recall_at"].keys() == ref["recall_at"].keys()
    for k in ref["recall_at"]:
        assert ours["recall_at"][k] == pytest.approx(ref["recall_at"][k], abs=1e-12), k
    for key in ("map_at_r", "r_precision"):
        if math.isnan(ref[key]):
            assert math.isnan(ours[key])
        else:
            assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


def tied_data(rng: np.random.Generator, n: int = 160, dim: int = 3,
              n_classes: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Integer-valued embeddings (exact float arithmetic: many exact distance ties), duplicates,
    classes of very different sizes and several singletons."""
    x = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
    x[n // 2: n // 2 + 10] = x[:10]  # exact duplicates
    labels = rng.integers(0, n_classes, size=n)
    labels[-4:] = [1000, 1001, 1002, 1003]  # singleton classes
    labels[:12] = 7  # one large class
    return x, labels


# ---------------------------------------------------------------- metrics vs explicit loops

@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_explicit_loops_with_ties_and_singletons(seed: int, symmetric: bool) -> None:
    x, labels = tied_data(np.random.default_rng(seed))
    ks = [1, 2, 3, 4, 8, 16, 50, 159, 1000]
    assert_same(scan(x, labels, ks, symmetric, block_size=37), ref_metrics(x, labels, ks))
    assert_same(retrieval_metrics(x, labels, ks=ks, with_nmi=False), ref_metrics(x, labels, ks))


def test_metrics_match_explicit_loops_continuous(rng: np.random.Generator) -> None:
    x = rng.normal(size=(120, 8)).astype(np.float32)
    labels = rng.integers(0, 15, size=120)
    ks = [1, 2, 4, 8, 32]
    assert_same(retrieval_metrics(x, labels, ks=ks, with_nmi=False, block_size=50), ref_metrics(x, labels, ks))


def test_block_size_and_scan_do_not_change_the_result(rng: np.random.Generator) -> None:
    x, labels = tied_data(rng)
    results = [scan(x, labels, [1, 5, 40], sym, block_size=b) for b in (3, 7, 64, 4096) for sym in (True, False)]
    assert all(r == results[0] for r in results)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block_size,max_k", [(16, None), (90, 3), (5, 1000)])
def test_first_hit_ranks_match_reference_exactly(rng: np.random.Generator, block_size: int, max_k,
                                                 symmetric: bool) -> None:
    x, labels = tied_data(rng, n=90)
    order = ref_neighbours(x)
    qr = query_ranks(x, labels, max_k=max_k, block_size=block_size, symmetric=symmetric)
    for i, nb in enumerate(order):
        ranks = [t for t, j in enumerate(nb) if labels[j] == labels[i]]
        true = ranks[0] if ranks else NO_HIT
        # the symmetric scan is always exact (with duplicate rows, as here, the row scan runs instead)
        exact_scan = symmetric and not has_duplicate_rows(torch.from_numpy(x))
        if max_k is None or true < max_k or true == NO_HIT or exact_scan:
            assert qr.first_hit[i] == true, i
        else:  # beyond max_k only a lower bound, itself at least max_k, is promised
            assert max_k <= qr.first_hit[i] <= true, i


def dense_reference(x: np.ndarray, labels: np.ndarray, ks) -> dict:
    """Vectorised reference for larger sets: exact float64 distances, stable argsort per row."""
    x = x.astype(np.float64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :-1]
    hits = labels[order] == labels[:, None]
    r = np.bincount(labels)[labels] - 1
    first = np.where(hits.any(1), hits.argmax(1), len(x) + 10**9)
    valid = r > 0
    recall = {str(k): float((first[valid] < k).mean()) for k in ks}
    cols = np.arange(1, hits.shape[1] + 1)
    h = hits & (cols[None] <= r[:, None])
    ap = ((np.cumsum(h, 1) / cols) * h).sum(1)[valid] / r[valid]
    rp = h.sum(1)[valid] / r[valid]
    return {"recall_at": recall, "map_at_r": float(ap.mean()), "r_precision": float(rp.mean())}


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("kind", ["tied", "continuous"])
def test_wide_rows_take_the_two_level_path_and_stay_exact(rng: np.random.Generator, kind: str,
                                                          symmetric: bool) -> None:
    # N > 1024, blocks of 1024, classes of 1-4 items: the two-level top-k runs (and its tie
    # fallbacks, on integer data), as do the chunked first-hit counts of the row scan
    n = 2100
    labels = np.repeat(np.arange(700), 3)[:n]
    labels[:40] = rng.integers(0, 30, size=40) * 1000 + 5000  # some larger classes and singletons
    if kind == "tied":
        x = rng.integers(-1, 2, size=(n, 5)).astype(np.float32)
    else:
        x = (np.eye(700, 16, dtype=np.float32)[labels % 700] + rng.normal(scale=0.3, size=(n, 16))).astype(np.float32)
    ks = [1, 4, 10, 100, 1000]
    assert_same(scan(x, labels, ks, symmetric, block_size=1024), dense_reference(x, labels, ks))


@pytest.mark.parametrize("kind", ["tied", "continuous"])
def test_symmetric_scan_does_not_depend_on_its_worker_threads(rng: np.random.Generator, kind: str) -> None:
    # the products run ahead on 2 or 3 single-threaded workers (or inline for 1): same bits, and
    # the metrics through the pipelined path equal the explicit loops
    n = 300
    labels = rng.integers(0, 60, size=n)
    if kind == "tied":
        x = rng.integers(-2, 3, size=(n, 4)).astype(np.float32)
        x = x[np.unique(x, axis=0, return_index=True)[1]]  # duplicates send query_ranks to the row scan
        labels = labels[:len(x)]
    else:
        x = rng.normal(size=(n, 8)).astype(np.float32)
    t = torch.from_numpy(x)
    pairs = class_pair_distances(t, np.unique(labels, return_inverse=True)[1])
    runs = [symmetric_scan(t, pairs, block_size=32, threads=w) for w in (1, 2, 3)]
    for first, top in runs[1:]:
        assert np.array_equal(first, runs[0][0]) and torch.equal(top, runs[0][1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the default follows torch's count: the pipelined path
    try:
        ks = [1, 2, 8, 100]
        assert_same(scan(x, labels, ks, True, block_size=48), ref_metrics(x, labels, ks))
    finally:
        torch.set_num_threads(before)


def test_hand_made_example() -> None:
    # 1-D points: class 0 at 0 and 1, class 1 at 10, 11 and 30
    x = np.array([[0.0], [1.0], [10.0], [11.0], [30.0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 1])
    m = retrieval_metrics(x, labels, ks=[1, 2], with_nmi=False)
    # point 30's nearest are 11 (hit), 10 (hit): every query hits at 1 → R@1 = 1
    assert m["recall_at"] == {"1": 1.0, "2": 1.0}
    # APs: 0 → 1; 1 → 1; 10 → [11, 1?] R=2: 11 hit (1/1), next nearest 1 (miss) → 0.5;
    # 11 → [10 hit, 1 miss] → 0.5; 30 → [11 hit, 10 hit] → 1
    assert m["map_at_r"] == pytest.approx((1 + 1 + 0.5 + 0.5 + 1) / 5)
    assert m["r_precision"] == pytest.approx((1 + 1 + 0.5 + 0.5 + 1) / 5)


def test_all_singletons_gives_nan_with_a_warning(caplog) -> None:
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    with caplog.at_level("WARNING"):
        m = retrieval_metrics(x, np.arange(5), ks=[1, 4], with_nmi=False)
    assert all(math.isnan(v) for v in m["recall_at"].values())
    assert math.isnan(m["map_at_r"]) and math.isnan(m["r_precision"])
    assert m["num_left_out"] == 5 and "undefined" in caplog.text


def test_bad_inputs_are_refused() -> None:
    x = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="NaN or infinite"):
        retrieval_metrics(np.full((4, 2), np.nan, dtype=np.float32), np.array([0, 0, 1, 1]), with_nmi=False)
    with pytest.raises(ValueError, match="labelled"):
        retrieval_metrics(x, np.array([0, -1, 1, 1]), with_nmi=False)
    with pytest.raises(ValueError, match="N labels"):
        retrieval_metrics(x, np.array([0, 1]), with_nmi=False)
    for ks in ([0], [1.7], [2.0], [True], [], [-1]):
        with pytest.raises(ValueError, match="positive integer K"):
            retrieval_metrics(x, np.array([0, 0, 1, 1]), ks=ks, with_nmi=False)


def test_hits_based_helpers_agree_with_the_scan(rng: np.random.Generator) -> None:
    x, labels = tied_data(rng)
    hits = neighbor_hits(x, labels, k=20)
    m = retrieval_metrics(x, labels, ks=[1, 5, 20], with_nmi=False)
    assert recall_at_k(hits, [1, 5, 20], labels=labels) == m["recall_at"]
    assert map_and_r_precision(hits, labels) == pytest.approx((m["map_at_r"], m["r_precision"]))


# ---------------------------------------------------------------- exact k-NN and ties

def test_order_keys_sort_like_value_then_index() -> None:
    values = torch.tensor([0.5, -0.0, 0.0, -2.5, float("inf"), 0.5, -1e-40, 1e-40, 3.0, -2.5])
    index = torch.tensor([7, 3, 1, 9, 0, 2, 4, 5, 6, 8])
    keys = order_keys(values, index)
    ranked = [(float(v), int(i)) for v, i in zip(key_value(keys), key_index(keys), strict=True)]
    assert ranked == [(float(v), int(i)) for v, i in zip(values, index, strict=True)]  # decodes back (−0 read as 0)
    by_key = [ranked[j] for j in torch.argsort(keys).tolist()]
    assert by_key == sorted(ranked)


def test_symmetric_scan_falls_back_for_huge_classes(rng: np.random.Generator) -> None:
    x = torch.from_numpy(rng.normal(size=(30, 4)).astype(np.float32))
    inverse = np.zeros(30, dtype=np.int64)
    assert class_pair_distances(x, inverse, max_entries=899) is None
    a, b, d = class_pair_distances(x, inverse, max_entries=900)
    assert len(a) == 30 * 29 // 2 and (a < b).all()
    assert np.allclose(d, ((x[a] - x[b]) ** 2).sum(1).numpy(), atol=1e-5)

def test_knn_orders_by_distance_then_index_across_the_topk_boundary() -> None:
    # every gallery point at the same distance from every query: all ties
    x = np.zeros((50, 3), dtype=np.float32)
    _, idx = knn(x, k=5, block_size=7)
    for i in range(50):
        assert idx[i].tolist() == [j for j in range(50) if j != i][:5]
    # queries vs a gallery where many items tie at the k-th position
    gallery = np.array([[0.0], [1.0], [-1.0], [1.0], [-1.0], [2.0], [1.0]], dtype=np.float32)
    d, idx = knn(np.zeros((1, 1), dtype=np.float32), gallery, k=3)
    assert idx.tolist() == [[0, 1, 2]] and d.tolist() == [[0.0, 1.0, 1.0]]


@pytest.mark.parametrize("width,high", [(300, 4), (2048, 3), (4096, 1000), (4096, 10**9)])
def test_smallest_k_matches_stable_sort(width: int, high: int) -> None:
    # few distinct values (ties everywhere, also across chunk minima) up to nearly distinct ones
    gen = torch.Generator().manual_seed(width + high)
    values = torch.randint(0, high, (64, width), generator=gen).float()
    sv, si = torch.sort(values, dim=1, stable=True)
    for k in (1, 3, 10, 60, width - 1, width):
        vals, idx = smallest_k(values, k)
        assert torch.equal(idx, si[:, :k]) and torch.equal(vals, sv[:, :k]), k
    rows = torch.tensor([5, 0, 63])
    vals, idx = smallest_k(values, 7, rows=rows)
    assert torch.equal(idx, si[rows, :7])


def test_knn_matches_reference_order(rng: np.random.Generator) -> None:
    x, _ = tied_data(rng, n=70)
    ref = ref_neighbours(x)
    _, idx = knn(x, k=30, block_size=9)
    assert idx.tolist() == [nb[:30] for nb in ref]


def test_knn_with_gallery_and_self_kept(rng: np.random.Generator) -> None:
    x = rng.normal(size=(30, 4)).astype(np.float32)
    d, idx = knn(x, k=1, exclude_self=False)
    assert idx[:, 0].tolist() == list(range(30)) and np.allclose(d[:, 0], 0, atol=1e-5)
    g = rng.normal(size=(40, 4)).astype(np.float32)
    d, idx = knn(x, g, k=40)
    full = ((x[:, None, :].astype(np.float64) - g[None].astype(np.float64)) ** 2).sum(-1)
    assert np.array_equal(idx, np.argsort(full, axis=1, kind="stable"))
    assert np.allclose(d, np.sort(full, axis=1), rtol=1e-4, atol=1e-4)


def test_knn_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        knn(np.zeros((3, 2), dtype=np.float32), k=3)


# ---------------------------------------------------------------- faiss gives the same answer

def test_faiss_knn_equals_torch_knn_with_ties(rng: np.random.Generator) -> None:
    pytest.importorskip("faiss")
    x, _ = tied_data(rng, n=150)
    for k in (1, 4, 25):
        d_t, i_t = knn(x, k=k)
        d_f, i_f = knn(x, k=k, use_faiss=True)
        assert np.array_equal(i_t, i_f), k
        assert np.allclose(d_t, d_f, atol=1e-4)


def test_faiss_metrics_equal_torch_metrics(rng: np.random.Generator) -> None:
    pytest.importorskip("faiss")
    for x, labels in (tied_data(rng), (rng.normal(size=(300, 16)).astype(np.float32), rng.integers(0, 40, 300))):
        kw = dict(ks=[1, 2, 4, 8, 100], with_nmi=False)
        assert retrieval_metrics(x, labels, use_faiss=True, **kw) == retrieval_metrics(x, labels, **kw)


# ---------------------------------------------------------------- pytorch-metric-learning cross-check

def test_against_pytorch_metric_learning(rng: np.random.Generator) -> None:
    acc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    # singleton classes included: pml leaves those queries out of every metric, and so do we
    labels = np.concatenate([np.repeat(np.arange(40), rng.integers(2, 9, size=40)), [100, 101, 102]])
    x = rng.normal(size=(len(labels), 32)).astype(np.float32)
    calc = acc.AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                                  k="max_bin_count")
    theirs = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(labels))
    ours = retrieval_metrics(x, labels, ks=[1], with_nmi=False)
    assert ours["recall_at"]["1"] == pytest.approx(theirs["precision_at_1"], abs=1e-9)
    assert ours["map_at_r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-9)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-9)


def test_nmi_against_pytorch_metric_learning(rng: np.random.Generator) -> None:
    acc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    # well-separated blobs: any k-means finds the classes, so both NMIs are 1
    from pytorch_metric_learning.utils.inference import FaissKMeans

    labels = np.repeat(np.arange(5), 50)
    x = (np.eye(5, 8)[labels] * 50 + rng.normal(scale=0.1, size=(250, 8))).astype(np.float32)
    calc = acc.AccuracyCalculator(include=("NMI",), kmeans_func=FaissKMeans(nredo=5, seed=0))
    theirs = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(labels))["NMI"]
    assert nmi(x, labels) == pytest.approx(theirs, abs=1e-6) == pytest.approx(1.0)
    # and random labels give an NMI far below 1
    assert nmi(x, rng.permutation(labels)) < 0.5


def test_nmi_is_skipped_above_the_class_limit_unless_asked_for() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    labels = np.arange(40) // 2  # 20 classes
    assert retrieval_metrics(x, labels, ks=[1], nmi_max_classes=10)["nmi"] is None
    forced = retrieval_metrics(x, labels, ks=[1], nmi_max_classes=None)["nmi"]
    assert forced is not None and 0.0 <= forced <= 1.0
    assert retrieval_metrics(x, labels, ks=[1])["nmi"] == forced  # 20 classes: under the default limit
