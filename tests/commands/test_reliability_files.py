"""Reliability (issue 14): embeddings/index files, image folders, metrics conventions, datasets.

Each test is a case a hostile or careless-user probe found: it fails on the code before the fix.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.datasets import write_cars, write_cub, write_sop
from helpers.shapes import make_shapes_folder
from plm.cli import main
from plm.errors import UserError
from plm.evaluation import query_ranks, retrieval_metrics

BACKBONE = ["--backbone", "efficientnet_lite0", "--image-size", "32"]


# ================================================================ metrics: explicit references

def ref_order(q: np.ndarray, g: np.ndarray, exclude: int | None) -> list[int]:
    """Gallery indices by (exact float64 squared distance, index), ``exclude`` left out."""
    d = ((g.astype(np.float64) - q.astype(np.float64)) ** 2).sum(1)
    return [j for _, j in sorted((float(d[j]), j) for j in range(len(g)) if j != exclude)]


def ref_metrics(x, labels, ks, reference=None, reference_labels=None) -> dict:
    """Recall@K, MAP@R, R-precision by explicit loops; queries with R = 0 left out of all three."""
    loo = reference is None
    g, gl = (x, labels) if loo else (reference, reference_labels)
    recall = {str(k): [] for k in ks}
    aps, rps, left = [], [], 0
    for i in range(len(x)):
        order = ref_order(x[i], g, i if loo else None)
        r = int(sum(1 for j in order if gl[j] == labels[i]))
        if r == 0:
            left += 1
            continue
        for k in ks:
            recall[str(k)].append(any(gl[j] == labels[i] for j in order[:k]))
        correct, ap = 0, 0.0
        for rank, j in enumerate(order[:r], start=1):
            if gl[j] == labels[i]:
                correct += 1
                ap += correct / rank
        aps.append(ap / r)
        rps.append(correct / r)
    mean = lambda v: float(np.mean(v)) if v else math.nan  # noqa: E731
    return {"recall_at": {k: mean(v) for k, v in recall.items()}, "map_at_r": mean(aps), "r_precision": mean(rps),
            "num_left_out": left}


def assert_metrics(ours: dict, ref: dict) -> None:
    assert ours["num_left_out"] == ref["num_left_out"]
    assert ours["recall_at"].keys() == ref["recall_at"].keys()
    for key, value in [*(("R@" + k, v) for k, v in ref["recall_at"].items()), ("map_at_r", ref["map_at_r"]),
                       ("r_precision", ref["r_precision"])]:
        got = ours["recall_at"][key[2:]] if key.startswith("R@") else ours[key]
        assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, abs=1e-12), key


# ================================================================ metrics: Recall@K convention

def test_recall_leaves_out_queries_without_another_item_of_their_class() -> None:
    # 1-D: class 0 at 0 and 1, class 1 at 10 and 11, singletons at 5 and 30
    x = np.array([[0.0], [1.0], [10.0], [11.0], [5.0], [30.0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 7, 8])
    m = retrieval_metrics(x, labels, ks=[1], with_nmi=False)
    assert m["recall_at"]["1"] == 1.0  # was 4/6: the two singletons counted as misses
    assert m["num_left_out"] == 2 and m["num_queries"] == 6


def test_recall_matches_pytorch_metric_learning_with_singletons(rng: np.random.Generator) -> None:
    acc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    labels = np.concatenate([np.repeat(np.arange(20), rng.integers(2, 6, size=20)), np.arange(100, 110)])
    x = rng.normal(size=(len(labels), 8)).astype(np.float32)
    theirs = acc.AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                                    k="max_bin_count").get_accuracy(torch.from_numpy(x), torch.from_numpy(labels))
    ours = retrieval_metrics(x, labels, ks=[1], with_nmi=False)
    assert ours["recall_at"]["1"] == pytest.approx(theirs["precision_at_1"], abs=1e-9)
    assert ours["map_at_r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-9)
    assert ours["num_left_out"] == 10


def test_all_singletons_is_nan_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        m = retrieval_metrics(np.eye(4, dtype=np.float32), np.arange(4), ks=[1, 2], with_nmi=False)
    assert all(math.isnan(v) for v in m["recall_at"].values())  # was 0.0
    assert "undefined" in caplog.text


@pytest.mark.parametrize("ks", [[1.7], [2.0], [0], [-3], [True], []])
def test_ks_must_be_positive_integers(ks) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        retrieval_metrics(np.eye(4, dtype=np.float32), np.array([0, 0, 1, 1]), ks=ks, with_nmi=False)


# ================================================================ metrics: one tie rule, exact enough

def duplicated(rng: np.random.Generator, n: int = 60, copies: int = 3, dim: int = 12):
    base = rng.normal(size=(n, dim)).astype(np.float32)
    x = np.concatenate([base] * copies)
    return x, rng.integers(0, n // 3, size=len(x))


@pytest.mark.parametrize("seed", [0, 1])
def test_duplicate_rows_are_ordered_by_one_tie_rule_on_every_path(seed: int) -> None:
    pytest.importorskip("faiss")
    x, labels = duplicated(np.random.default_rng(seed))
    ks = [1, 2, 3, 10]
    ref = ref_metrics(x, labels, ks)
    results = {"symmetric": retrieval_metrics(x, labels, ks=ks, with_nmi=False, block_size=32),
               "rows": retrieval_metrics(x, labels, ks=ks, with_nmi=False, symmetric=False, block_size=32),
               "faiss": retrieval_metrics(x, labels, ks=ks, with_nmi=False, use_faiss=True)}
    for m in results.values():
        assert_metrics(m, ref)
    a = query_ranks(x, labels, block_size=32, symmetric=True)
    b = query_ranks(x, labels, block_size=32, symmetric=False)
    assert np.array_equal(a.first_hit, b.first_hit) and np.array_equal(a.ap_at_r, b.ap_at_r, equal_nan=True)


@pytest.mark.parametrize("offset", [1e2, 1e3, 1e4])
def test_a_common_offset_does_not_change_the_answer(offset: float) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(150, 16)).astype(np.float32)
    labels = rng.integers(0, 30, size=150)
    shifted = (x + np.float32(offset)).astype(np.float32)
    ks = [1, 2, 4, 8]
    truth = ref_metrics(shifted, labels, ks)  # exact on the float32 input as given
    for sym in (True, False):
        assert_metrics(retrieval_metrics(shifted, labels, ks=ks, with_nmi=False, symmetric=sym), truth)
    assert_metrics(retrieval_metrics(shifted, labels, ks=ks, with_nmi=False, use_faiss=True), truth)


@pytest.mark.parametrize("scale", [1e19, 1e-25, 1e15, 3.7e-7])
def test_extreme_scales_do_not_change_the_answer(scale: float) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 8)).astype(np.float32)
    labels = np.repeat(np.arange(20), 5)
    truth = ref_metrics(x, labels, [1, 4])
    assert truth["recall_at"]["1"] < 0.5
    scaled = (x.astype(np.float64) * scale).astype(np.float32)
    for sym in (True, False):
        m = retrieval_metrics(scaled, labels, ks=[1, 4], with_nmi=False, symmetric=sym)
        assert m["recall_at"]["1"] == pytest.approx(truth["recall_at"]["1"])  # ×1e19 gave 1.0
        assert m["map_at_r"] == pytest.approx(truth["map_at_r"], abs=1e-9)


# ================================================================ metrics: query / gallery (issue 13)

def test_query_gallery_agrees_with_leave_one_out(rng: np.random.Generator) -> None:
    from plm.evaluation.metrics import reference_ranks

    x = rng.normal(size=(40, 6)).astype(np.float32)
    labels = rng.integers(0, 8, size=40)
    loo = query_ranks(x, labels)
    for i in range(len(x)):  # item i against all the others is its leave-one-out query
        rest = np.delete(np.arange(len(x)), i)
        one = reference_ranks(x[i:i + 1], labels[i:i + 1], x[rest], labels[rest])
        assert one.first_hit[0] == loo.first_hit[i] and one.r[0] == loo.r[i]
        assert np.array_equal(one.ap_at_r, loo.ap_at_r[i:i + 1], equal_nan=True)


@pytest.mark.parametrize("use_faiss", [False, True])
def test_query_gallery_against_an_explicit_loop_and_pml(rng: np.random.Generator, use_faiss: bool) -> None:
    if use_faiss:
        pytest.importorskip("faiss")
    q = rng.normal(size=(50, 6)).astype(np.float32)
    g = rng.normal(size=(90, 6)).astype(np.float32)
    ql, gl = rng.integers(0, 12, size=50), rng.integers(0, 10, size=90)  # classes 10, 11: not in the gallery
    ks = [1, 2, 5, 200]
    m = retrieval_metrics(q, ql, ks=ks, with_nmi=False, reference=g, reference_labels=gl, use_faiss=use_faiss,
                          block_size=16)
    assert_metrics(m, ref_metrics(q, ql, ks, reference=g, reference_labels=gl))
    assert m["num_reference"] == 90 and m["num_queries"] == 50
    acc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    theirs = acc.AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                                    k="max_bin_count").get_accuracy(torch.from_numpy(q), torch.from_numpy(ql),
                                                                    torch.from_numpy(g), torch.from_numpy(gl))
    assert m["recall_at"]["1"] == pytest.approx(theirs["precision_at_1"], abs=1e-9)
    assert m["map_at_r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-9)
    assert m["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-9)


def test_eval_query_gallery_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_shapes_folder(tmp_path / "q", per_class=3, seed=1)
    make_shapes_folder(tmp_path / "g", per_class=5, seed=2, classes=("squares", "triangles"))
    out = tmp_path / "m.json"
    assert main(["eval", "--query", str(tmp_path / "q"), "--gallery", str(tmp_path / "g"), *BACKBONE,
                 "--no-nmi", "--no-cache", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "R@1" in printed and "MAP@R" in printed
    data = json.loads(out.read_text())
    assert data["num_queries"] == 9 and data["num_reference"] == 10
    assert data["num_left_out"] == 3  # the circles: no circle in the gallery
    assert main(["eval", "--query", str(tmp_path / "q"), *BACKBONE]) == 2
    assert "together" in capsys.readouterr().err


# ================================================================ embeddings and index files

@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("faiss")
    tmp = tmp_path_factory.mktemp("rel")
    root = tmp / "imgs"
    make_shapes_folder(root, per_class=6)
    emb, idx, hnsw = tmp / "emb.npz", tmp / "idx.npz", tmp / "hnsw.npz"
    assert main(["embed", str(root), *BACKBONE, "--out", str(emb), "--quiet"]) == 0
    assert main(["index", str(emb), "--out", str(idx)]) == 0
    assert main(["index", str(emb), "--out", str(hnsw), "--kind", "hnsw", "--M", "8"]) == 0
    return {"tmp": tmp, "root": root, "emb": emb, "idx": idx, "hnsw": hnsw}


def rewrite(src: Path, dst: Path, **changes) -> Path:
    """A copy of a plm .npz with some arrays replaced (``meta`` may be given as a dict or a str)."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if k == "meta_fn":
            meta = json.loads(str(arrays["meta"]))
            arrays["meta"] = np.array(json.dumps(v(meta)))
        else:
            arrays[k] = v
    np.savez(dst, **arrays)
    return dst


def one_line(capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def _set(path: list[str], value):
    def change(meta: dict) -> dict:
        obj = meta
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
        return meta
    return change


MALFORMED_EMB = {
    "model-is-a-list": _set(["model"], ["efficientnet"]),
    "model-is-a-string": _set(["model"], "efficientnet"),
    "preprocess-is-a-string": _set(["model", "preprocess"], "resize"),
    "class-names-is-a-string": _set(["class_names"], "cats"),
    "root-is-a-list": _set(["root"], ["/x"]),
    "dim-is-a-string": _set(["model", "dim"], "1280"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_EMB))
def test_malformed_embeddings_metadata_gives_one_clear_error(collection, case: str, capsys) -> None:
    bad = rewrite(collection["emb"], collection["tmp"] / f"bad-{case}.npz", meta_fn=MALFORMED_EMB[case])
    assert main(["index", str(bad), "--out", str(collection["tmp"] / f"out-{case}.npz")]) == 2
    one_line(capsys, str(bad))
    assert not (collection["tmp"] / f"out-{case}.npz").exists()


MALFORMED_IDX = {
    "index-is-a-string": _set(["index"], "exact"),
    "count-is-null": _set(["index", "count"], None),
    "model-is-a-string": _set(["model"], "efficientnet"),
    "preprocess-is-a-list": _set(["model", "preprocess"], [32]),
    "class-names-is-a-list": _set(["class_names"], ["cats"]),
    "root-is-a-number": _set(["root"], 7),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_IDX))
def test_malformed_index_metadata_gives_one_clear_error(collection, case: str, capsys) -> None:
    bad = rewrite(collection["idx"], collection["tmp"] / f"badidx-{case}.npz", meta_fn=MALFORMED_IDX[case])
    query = next((collection["root"] / "squares").iterdir())
    assert main(["search", str(bad), str(query)]) == 2
    one_line(capsys, str(bad))


def test_wrong_dtypes_and_shapes_are_refused(collection) -> None:
    from plm.search import EmbeddingStore, SearchIndex

    t = collection["tmp"]
    with np.load(collection["emb"]) as z:
        vec = z["vectors"]
    cases = [rewrite(collection["emb"], t / "e1.npz", vectors=vec.astype(np.int64)),
             rewrite(collection["emb"], t / "e2.npz", vectors=vec[:, :5]),
             rewrite(collection["emb"], t / "e3.npz", labels=np.zeros((len(vec), 2), np.int64)),
             rewrite(collection["emb"], t / "e4.npz", paths=np.arange(len(vec)))]
    for path in cases:
        with pytest.raises(UserError, match=str(path)):
            EmbeddingStore.load(path)
    with np.load(collection["idx"]) as z:
        ivec = z["vectors"]
    ivec = ivec.copy()
    ivec[0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        SearchIndex.load(rewrite(collection["idx"], t / "i1.npz", vectors=ivec))


def test_hnsw_file_holding_a_flat_index_is_refused_clearly(collection, capsys) -> None:
    import faiss

    with np.load(collection["hnsw"]) as z:
        vectors_dim = json.loads(str(z["meta"]))["index"]["dim"]
    flat = faiss.IndexFlatL2(vectors_dim)
    with np.load(collection["emb"]) as z:
        flat.add(np.ascontiguousarray(z["vectors"]))
    unchecked = _set(["index", "sha256"], None)  # as written before index files carried a checksum
    bad = rewrite(collection["hnsw"], collection["tmp"] / "flat.npz", faiss=faiss.serialize_index(flat),
                  meta_fn=unchecked)
    query = next((collection["root"] / "squares").iterdir())
    assert main(["search", str(bad), str(query)]) == 2
    err = one_line(capsys, str(bad), "IndexFlatL2")
    assert "has no attribute" not in err


@pytest.mark.parametrize("poison", ["nan", "inf", "zero"])
def test_index_refuses_vectors_that_cannot_be_searched(collection, poison: str, capsys) -> None:
    with np.load(collection["emb"]) as z:
        vec = z["vectors"].copy()
    vec[2] = {"nan": np.nan, "inf": np.inf, "zero": 0.0}[poison]
    bad = rewrite(collection["emb"], collection["tmp"] / f"poison-{poison}.npz", vectors=vec)
    out = collection["tmp"] / f"poison-idx-{poison}.npz"
    assert main(["index", str(bad), "--out", str(out)]) == 2
    one_line(capsys, str(bad), "1 vector(s)")
    assert not out.exists()


def test_incremental_embed_recomputes_bad_reused_rows(collection, capsys) -> None:
    from plm.search import EmbeddingStore

    emb = collection["tmp"] / "incremental.npz"
    shutil.copy(collection["emb"], emb)
    store = EmbeddingStore.load(emb)
    good = store.vectors.copy()
    store.vectors[1] = np.nan
    store.vectors[4] = 0.0
    store.save(emb)
    capsys.readouterr()
    assert main(["embed", str(collection["root"]), *BACKBONE, "--out", str(emb), "--quiet"]) == 0
    assert "embedded 2 new or changed" in capsys.readouterr().out
    again = EmbeddingStore.load(emb)
    assert not again.bad_rows().any()
    assert np.allclose(again.vectors, good, atol=1e-5)


# ================================================================ sizes checked before loading

def _bomb(path: Path, nbytes: int) -> Path:
    """A plm-embeddings .npz whose 'vectors' member deflates from ~nbytes/1000 to nbytes."""
    from numpy.lib import format as npy_format

    n = nbytes // (4 * 16)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("vectors.npy", "w", force_zip64=True) as fh:
            npy_format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (n, 16)})
            zeros = bytes(1 << 22)
            left = n * 16 * 4
            while left:
                fh.write(zeros[:min(left, len(zeros))])
                left -= min(left, len(zeros))
        meta = {"format": "plm-embeddings", "version": 1}
        buf = io.BytesIO()
        np.save(buf, np.array(json.dumps(meta)))
        zf.writestr("meta.npy", buf.getvalue())
    return path


def test_zip_bomb_is_refused_before_memory_is_spent(tmp_path: Path) -> None:
    from plm.search import EmbeddingStore

    bomb = _bomb(tmp_path / "bomb.npz", 256 << 20)
    assert bomb.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="zip bomb"):
            EmbeddingStore.load(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_forged_header_and_memory_limit_are_refused(tmp_path: Path) -> None:
    from numpy.lib import format as npy_format

    from plm.utils.npzfile import NpzError, npz_members

    path = tmp_path / "forged.npz"
    buf = io.BytesIO()  # a header that claims far more rows than the member holds
    npy_format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**10, 4)})
    buf.write(bytes(160))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("vectors.npy", buf.getvalue())
    with pytest.raises(NpzError, match="truncated or forged"):
        npz_members(path)
    np.savez(path, vectors=np.zeros((1000, 4), np.float32))
    with pytest.raises(NpzError, match="more than"):
        npz_members(path, max_bytes=1000)
    np.savez(path, obj=np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(NpzError, match="Python objects"):
        npz_members(path)


# ================================================================ image folders

def test_symlink_loops_and_dangling_links_are_skipped_and_counted(tmp_path: Path, capsys) -> None:
    root = tmp_path / "imgs"
    make_shapes_folder(root, per_class=3)
    os.symlink("loop.jpg", root / "squares" / "loop.jpg")  # a link to itself
    os.symlink("gone.png", root / "circles" / "dangling.png")
    out = tmp_path / "e.npz"
    assert main(["embed", str(root), *BACKBONE, "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 2 unreadable" in printed
    assert "symbolic link loop" in printed and "dangling symbolic link" in printed
    # and a re-run keeps them skipped without failing
    assert main(["embed", str(root), *BACKBONE, "--out", str(out), "--quiet"]) == 0
    assert "reused 9" in capsys.readouterr().out


def test_file_names_that_are_not_utf8_survive_every_step(tmp_path: Path, capsys) -> None:
    pytest.importorskip("faiss")
    root = tmp_path / "imgs"
    make_shapes_folder(root, per_class=3)
    odd = os.fsdecode(b"caf\xe9 <b>.png")  # Latin-1 byte, not UTF-8, plus markup
    shutil.copy(root / "squares" / "square_000.png", root / "squares" / odd)
    emb, idx, js, page = (tmp_path / n for n in ("e.npz", "i.npz", "r.json", "r.html"))
    assert main(["embed", str(root), *BACKBONE, "--out", str(emb), "--quiet"]) == 0
    assert main(["index", str(emb), "--out", str(idx)]) == 0
    capsys.readouterr()
    assert main(["search", str(idx), str(root / "squares"), "-k", "3", "--json", str(js), "--html", str(page)]) == 0
    printed = capsys.readouterr().out
    assert "caf\\xe9 <b>.png" in printed
    data = json.loads(js.read_text(encoding="utf-8"))
    names = {q["query"] for q in data["queries"]} | {r["path"] for q in data["queries"] for r in q["results"]}
    assert str(root / "squares" / odd) in names and f"squares/{odd}" in names  # lossless (surrogateescape)
    assert os.fsencode(f"squares/{odd}") == b"squares/caf\xe9 <b>.png"
    html = page.read_text(encoding="utf-8")
    assert "caf\\xe9 &lt;b&gt;.png" in html and "<b>.png" not in html


# ================================================================ datasets: one rule, layouts, headers

def test_an_entry_leaving_the_root_refuses_the_dataset_in_train_as_in_eval(tmp_path: Path) -> None:
    from plm.data import UnsafePathError
    from plm.training.config import resolve_config
    from plm.training.splits import load_splits

    folder = write_cub(tmp_path, {1: 3, 2: 3, 3: 3, 4: 3, 101: 3, 102: 3})
    lines = (folder / "images.txt").read_text().splitlines()
    last_id = lines[-1].split()[0]
    lines[-1] = f"{last_id} ../../outside.jpg"  # a test-split (unseen class) entry
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    config = resolve_config(None, {"dataset": "cub200", "data_root": str(tmp_path)}, [])
    with pytest.raises(UnsafePathError):
        load_splits(config)  # was: the test split silently dropped, exit 0 without metrics.json
    assert main(["eval", "--dataset", "cub200", "--data-root", str(tmp_path), *BACKBONE]) == 2


def test_sop_file_without_its_header_keeps_its_first_image(tmp_path: Path) -> None:
    from plm.data.sop import load_sop

    folder = write_sop(tmp_path, train={1: 2, 2: 2}, test={3: 3, 4: 2})
    with_header = load_sop(tmp_path, "test")
    text = (folder / "Ebay_test.txt").read_text().splitlines()
    (folder / "Ebay_test.txt").write_text("\n".join(text[1:]) + "\n")
    without = load_sop(tmp_path, "test")
    assert len(without) == len(with_header) == 5 and without.ids == with_header.ids


@pytest.mark.parametrize("dataset", ["cub200", "cars196", "sop"])
def test_missing_image_folder_gives_the_layout_error(tmp_path: Path, dataset: str, capsys) -> None:
    if dataset == "cub200":
        shutil.rmtree(write_cub(tmp_path, {101: 2, 102: 2}) / "images")
    elif dataset == "cars196":
        shutil.rmtree(write_cars(tmp_path, {99: 2, 100: 2}) / "car_ims")
    else:
        folder = write_sop(tmp_path, train={1: 2}, test={2: 2, 3: 2})
        for sub in folder.glob("*_final"):
            shutil.rmtree(sub)
    assert main(["eval", "--dataset", dataset, "--data-root", str(tmp_path), *BACKBONE, "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "Expected layout" in err and "missing image folder" in err and "need at least 2" not in err


def test_unreadable_sub_folder_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog) -> None:
    """Tests run as root, so the permission error is simulated where os.walk lists a folder."""
    import logging
    import os

    from PIL import Image

    from plm.data.folder import list_images

    (tmp_path / "ok").mkdir()
    (tmp_path / "locked").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "ok" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "locked" / "b.png")
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.WARNING, logger="plm.data.folder"):
        assert list_images(tmp_path) == ["ok/a.png"]
    assert any("locked" in r.getMessage() and "cannot be read" in r.getMessage() for r in caplog.records)
