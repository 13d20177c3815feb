"""VectorIndex: exact search against a brute-force loop, approximate kinds against exact, file round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from plm.errors import UserError
from plm.search import SearchIndex, VectorIndex, ann_recall, exact_neighbors, tune_search
from plm.search.index import unit_rows

faiss = pytest.importorskip("faiss")


def _clustered(rng: np.random.Generator, n: int = 2000, d: int = 16, centres: int = 20) -> np.ndarray:
    c = rng.standard_normal((centres, d)) * 3
    return (c[rng.integers(0, centres, n)] + rng.standard_normal((n, d))).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_matches_a_python_loop(rng: np.random.Generator, metric: str) -> None:
    x = rng.standard_normal((300, 8)).astype(np.float32)
    q = rng.standard_normal((7, 8)).astype(np.float32)
    dist, ids = VectorIndex.build(x, "exact", metric).search(q, 5)
    for qi in range(len(q)):
        if metric == "cosine":
            a, b = q[qi] / np.linalg.norm(q[qi]), x / np.linalg.norm(x, axis=1, keepdims=True)
            ref = [1.0 - float(a @ v) for v in b]
        else:
            ref = [float(np.sqrt(((q[qi] - v) ** 2).sum())) for v in x]
        order = sorted(range(len(x)), key=lambda j: ref[j])[:5]
        assert ids[qi].tolist() == order
        np.testing.assert_allclose(dist[qi], [ref[j] for j in order], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_torch_fallback_agrees_with_faiss(rng: np.random.Generator, metric: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    faiss = pytest.importorskip("faiss")
    import plm.search.index as mod

    x = rng.standard_normal((5000, 12)).astype(np.float32)
    x = unit_rows(x) if metric == "cosine" else x
    q = x[:40] + 0.01
    q = unit_rows(q) if metric == "cosine" else q
    monkeypatch.setattr(mod, "have_faiss", lambda: False)  # the exact k-NN's torch blocks
    d_np, i_np = VectorIndex.build(x, "exact", metric).search(q, 10)
    d_f, i_f = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2)
    d_f = 1.0 - d_f if metric == "cosine" else np.sqrt(np.maximum(d_f, 0))
    assert (i_np == i_f).mean() > 0.99
    np.testing.assert_allclose(d_np, d_f, atol=1e-4)


@pytest.mark.parametrize("faiss_on", [True, False])
def test_exact_index_breaks_ties_by_id(faiss_on: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import plm.search.index as mod

    if faiss_on and not mod.have_faiss():
        pytest.skip("faiss not installed")
    monkeypatch.setattr(mod, "have_faiss", lambda: faiss_on)
    base = np.eye(4, dtype=np.float32)
    x = base[[2, 0, 2, 1, 2, 3, 0]]  # three copies of e2, two of e0
    for metric in ("cosine", "l2"):
        d, ids = VectorIndex.build(x, "exact", metric).search(base[[2, 0]], 4)
        assert ids[0].tolist()[:3] == [0, 2, 4] and ids[1].tolist()[:2] == [1, 6]
        assert d[0, :3].tolist() == [0.0, 0.0, 0.0]


def test_exact_without_faiss_uses_numpy(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    import plm.search.index as mod

    x = rng.standard_normal((500, 8)).astype(np.float32)
    want = VectorIndex.build(x, "exact").search(x[:5], 3)[1]
    monkeypatch.setattr(mod, "have_faiss", lambda: False)
    got = VectorIndex.build(x, "exact").search(x[:5], 3)[1]
    assert np.array_equal(got, want) and got[:, 0].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "pq"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_approximate_agrees_with_exact(rng: np.random.Generator, kind: str, metric: str) -> None:
    x = _clustered(rng)
    picked = x[rng.choice(len(x), 200, replace=False)]  # drawn before the noise, as the seed expects
    queries = picked + 0.3 * rng.standard_normal((200, x.shape[1])).astype(np.float32)
    exact_d, exact_i = VectorIndex.build(x, "exact", metric).search(queries, 10)
    approx = VectorIndex.build(x, kind, metric)
    rows = tune_search(approx, x, target=0.95, k=10, sample=300)
    assert rows[-1]["recall"] >= 0.95 and rows[-1]["value"] == approx.params[approx.search_param]
    d, i = approx.search(queries, 10)
    assert ann_recall(i, exact_i) >= 0.9
    same = i[:, 0] == exact_i[:, 0]  # where the top hit agrees, so does its distance
    np.testing.assert_allclose(d[same, 0], exact_d[same, 0], rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(d, axis=1) >= -1e-6)


def test_tuning_raises_the_knob_until_the_target(rng: np.random.Generator) -> None:
    x = rng.standard_normal((3000, 32)).astype(np.float32)  # random data: low ef gives poor recall
    index = VectorIndex.build(x, "hnsw", M=8, ef_construction=20)
    rows = tune_search(index, x, target=0.99, k=10, sample=200)
    recalls = [r["recall"] for r in rows]
    assert len(rows) > 1 and recalls[0] < 0.99 and recalls[-1] >= 0.99
    assert [r["value"] for r in rows] == sorted(r["value"] for r in rows)


def test_recall_excludes_the_query_itself(rng: np.random.Generator) -> None:
    x = rng.standard_normal((200, 8)).astype(np.float32)
    exact = VectorIndex.build(x, "exact")
    assert tune_search(exact, x, k=5, sample=50)[0]["recall"] == 1.0
    assert ann_recall(np.array([[1, 2, 3]]), np.array([[3, 4, 5]])) == pytest.approx(1 / 3)
    ids = exact_neighbors(x, x[:3], 1, "cosine")
    assert ids[:, 0].tolist() == [0, 1, 2]


def test_dimension_mismatch_and_bad_input(rng: np.random.Generator) -> None:
    index = VectorIndex.build(rng.standard_normal((50, 8)).astype(np.float32), "exact")
    with pytest.raises(ValueError, match="dimension mismatch: the index holds 8-d"):
        index.search(np.zeros((1, 9), np.float32), 3)
    with pytest.raises(ValueError, match="2-D"):
        index.search(np.zeros(8, np.float32), 3)
    with pytest.raises(ValueError, match="empty"):
        VectorIndex.build(np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError, match="kind must be one of"):
        VectorIndex.build(np.ones((3, 8), np.float32), "annoy")
    assert index.search(np.ones((2, 8), np.float32), 100)[1].shape == (2, 50)  # k capped at N


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf", "pq"])
def test_index_file_round_trip(tmp_path: Path, rng: np.random.Generator, kind: str) -> None:
    x = _clustered(rng, n=500)
    index = VectorIndex.build(x, kind)
    paths = [f"c{i % 3}/img_{i}.jpg" for i in range(500)]
    model = {"source": "backbone", "backbone": "efficientnet_lite0", "dim": 16, "fingerprint": "abc"}
    SearchIndex(index, paths, np.arange(500) % 3, "/data", model, {0: "a", 1: "b", 2: "c"},
                {"recall": [{"x": 1}]}).save(tmp_path / "i.npz")
    with np.load(tmp_path / "i.npz", allow_pickle=False) as z:
        assert ("vectors" in z.files) == (kind == "exact") and ("faiss" in z.files) == (kind != "exact")
    back = SearchIndex.load(tmp_path / "i.npz")
    assert back.paths == paths and back.class_names[2] == "c" and back.model == model
    assert back.index.params == index.params and back.extra["recall"] == [{"x": 1}]
    d1, i1 = index.search(x[:20], 5)
    d2, i2 = back.index.search(x[:20], 5)
    assert np.array_equal(i1, i2) and np.allclose(d1, d2)


def test_index_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="file not found"):
        SearchIndex.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a plm-index file"):
        SearchIndex.load(tmp_path / "junk.npz")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, meta=np.array([{"format": "plm-index"}], dtype=object))
    with pytest.raises(UserError, match="not a plm-index file"):  # object arrays are refused, never unpickled
        SearchIndex.load(pickled)


def test_benchmark_runs_small(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import importlib
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root holds benchmarks/
    bench = importlib.import_module("benchmarks.bench_index")
    out = tmp_path / "bench.json"
    assert bench.main(["--n", "3000", "--dim", "32", "--queries", "100", "--nlist", "16", "--nprobe", "2", "16",
                       "--hnsw", "8,20", "--ef-search", "16", "256", "--pq-m", "16", "--k-factor", "5",
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["index"] for r in rows} == {"exact (flat)", "IVF16,Flat", "PQ16x4fs + re-rank", "HNSW8,efC=20"}
    assert rows[0]["recall"] == 1.0 and all(0 <= r["recall"] <= 1 and r["qps"] > 0 for r in rows)
    ivf = [r for r in rows if r["index"] == "IVF16,Flat"]
    assert ivf[-1]["value"] == 16 and ivf[-1]["recall"] == 1.0  # every cell visited: exact
    assert "| index | build (s) |" in capsys.readouterr().out


def test_a_damaged_hnsw_graph_is_refused_not_searched(tmp_path: Path, rng: np.random.Generator) -> None:
    """Issue 27: unlinking one node of the HNSW graph (the file otherwise intact) made its image vanish from
    every result without a word; the checksum written with the index now refuses such a file."""
    x = _clustered(rng, n=300)
    model = {"source": "backbone", "backbone": "efficientnet_lite0", "dim": 16, "fingerprint": "abc"}
    path = tmp_path / "i.npz"
    SearchIndex(VectorIndex.build(x, "hnsw", M=8), [f"{i}.jpg" for i in range(300)], np.full(300, -1), "/data",
                model).save(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    graph = faiss.deserialize_index(arrays["faiss"])
    victim = next(i for i in range(300) if i != graph.hnsw.entry_point)
    links = faiss.vector_to_array(graph.hnsw.neighbors)
    links[links == victim] = -1  # nothing leads to the victim any more
    faiss.copy_array_to_vector(links, graph.hnsw.neighbors)
    arrays["faiss"] = faiss.serialize_index(graph)
    np.savez(tmp_path / "damaged.npz", **arrays)  # a valid archive with the same meta record
    assert victim not in graph.search(x[victim:victim + 1], 10)[1]  # what a search would have answered
    with pytest.raises(UserError, match="damaged.npz .*checksum recorded when it was written"):
        SearchIndex.load(tmp_path / "damaged.npz")
    assert SearchIndex.load(path).index.count == 300  # the intact file still loads
