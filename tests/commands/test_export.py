"""plm export end to end on a small folder: CSV and Parquet read back by pandas / pyarrow, the faiss
file by faiss.read_index (same neighbours as plm's own index), and clear errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.shapes import make_shapes_folder, store_like
from plm.cli import main
from plm.search import EmbeddingStore, SearchIndex

faiss = pytest.importorskip("faiss")
HOSTILE = 'odd, "name".png'


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("export")
    root = tmp / "imgs"
    make_shapes_folder(root, per_class=5)
    shutil.copy(root / "squares" / "square_001.jpg", root / "squares" / HOSTILE)
    emb = tmp / "emb.npz"
    assert main(["embed", str(root), "--out", str(emb), "--backbone", "efficientnet_lite0", "--image-size", "32",
                 "--quiet"]) == 0
    for kind in ("exact", "hnsw"):
        assert main(["index", str(emb), "--out", str(tmp / f"{kind}.npz"), "--kind", kind, "--hnsw-m", "8"]) == 0
    return {"tmp": tmp, "root": root, "emb": emb}


def test_csv_reads_back_exactly_with_pandas(made: dict[str, Path]) -> None:
    pd = pytest.importorskip("pandas")
    out = made["tmp"] / "emb.csv"
    assert main(["export", str(made["emb"]), "--out", str(out)]) == 0
    store = EmbeddingStore.load(made["emb"])
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns[:3]) == ["path", "label", "embedding_0"] and len(df.columns) == 2 + store.dim
    assert df["path"].tolist() == store.paths and f"squares/{HOSTILE}" in store.paths
    assert df["label"].tolist() == [store.class_names[int(y)] for y in store.labels]
    vec = df[[f"embedding_{j}" for j in range(store.dim)]].to_numpy(np.float32)
    np.testing.assert_array_equal(vec, store.vectors)


def test_parquet_reads_back_with_pyarrow_and_pandas(made: dict[str, Path]) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    pd = pytest.importorskip("pandas")
    out = made["tmp"] / "emb.parquet"
    assert main(["export", str(made["emb"]), "--out", str(out)]) == 0
    store = EmbeddingStore.load(made["emb"])
    table = pq.read_table(out)
    assert table.column_names == ["path", "label", "embedding"]
    assert table.schema.field("embedding").type.list_size == store.dim
    vec = np.asarray(table.column("embedding").combine_chunks().flatten(), np.float32).reshape(-1, store.dim)
    np.testing.assert_array_equal(vec, store.vectors)
    meta = json.loads(table.schema.metadata[b"plm"])
    assert meta["model"]["fingerprint"] == store.model["fingerprint"] and meta["root"] == store.root
    df = pd.read_parquet(out)
    assert df["path"].tolist() == store.paths and set(df["label"]) == {"circles", "squares", "triangles"}


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_faiss_file_opens_with_read_index_and_finds_the_same_neighbours(made: dict[str, Path], kind: str) -> None:
    out = made["tmp"] / f"{kind}.faiss"
    assert main(["export", str(made["tmp"] / f"{kind}.npz"), "--out", str(out)]) == 0
    ids = json.loads((made["tmp"] / f"{kind}.ids.json").read_text())
    idx = SearchIndex.load(made["tmp"] / f"{kind}.npz")
    index = faiss.read_index(str(out))
    assert index.ntotal == len(idx.paths) == len(ids["paths"]) and index.d == idx.index.dim
    assert ids["paths"] == idx.paths and ids["normalize_queries"] is True
    store = EmbeddingStore.load(made["emb"])
    q = store.vectors[:5] / np.linalg.norm(store.vectors[:5], axis=1, keepdims=True)
    scores, found = index.search(np.ascontiguousarray(q, np.float32), 4)
    dist, expected = idx.index.search(q, 4)
    np.testing.assert_array_equal(found, expected)
    # issue 24: every kind in one convention, squared L2 of unit vectors (the exact kind gave cosine similarity)
    assert ids["faiss_metric"] == "l2" and type(index).__name__ != "IndexFlatIP"
    np.testing.assert_allclose(scores / 2, dist, atol=1e-5)
    assert [ids["paths"][i] for i in found[:, 0]] == store.paths[:5]


def test_wrong_inputs_give_one_clear_line(made: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    cases = [
        (["export", str(made["tmp"] / "exact.npz"), "--out", str(made["tmp"] / "x.csv")], "exports to faiss"),
        (["export", str(made["emb"]), "--out", str(made["tmp"] / "x.faiss")], "exports to csv or parquet"),
        (["export", str(made["emb"]), "--out", str(made["tmp"] / "x.txt")], "cannot tell the format"),
        (["export", str(made["emb"]), "--out", str(made["emb"]), "--format", "csv"], "also an input"),
        (["export", str(made["tmp"] / "missing.npz"), "--out", str(made["tmp"] / "x.csv")], "file not found"),
        (["export", str(made["root"] / "squares" / "square_001.jpg"), "--out", str(made["tmp"] / "x.csv")],
         "neither a plm embeddings file"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (made["tmp"] / "x.csv").exists() and not (made["tmp"] / "x.faiss").exists()
    assert main(["export", str(made["emb"]), "--out", str(made["tmp"] / "x.txt"), "--format", "csv"]) == 0


def test_parquet_without_pyarrow_names_the_extra(made: dict[str, Path], monkeypatch, capsys) -> None:
    from helpers.cli import without_module

    without_module(monkeypatch, "pyarrow")
    assert main(["export", str(made["emb"]), "--out", str(made["tmp"] / "none.parquet")]) == 2
    assert "plm[parquet]" in capsys.readouterr().err


# ------------------------------------------------------------------------------ issue 27


def _export(capsys, caplog, *argv: str) -> tuple[int, str]:
    """(exit status, what it said on stderr and in warnings)."""
    caplog.clear()
    code = main(["export", *argv])
    return code, capsys.readouterr().err + caplog.text


def test_csv_cells_that_spreadsheets_would_run_are_neutralised(made: dict[str, Path], tmp_path: Path, capsys,
                                                               caplog) -> None:
    from plm.search import EmbeddingStore

    store = EmbeddingStore.load(made["emb"])
    hostile = ['=HYPERLINK("http://x","y").png', "+1.png", "-2.png", "@SUM(A1).png", "\tx.png", "\rx.png"]
    paths = hostile + store.paths[len(hostile):]
    names = {k: ("=cmd|' /C calc'!A0" if k == 0 else v) for k, v in store.class_names.items()}
    src = store_like(made["emb"], tmp_path / "hostile.npz", paths=paths, class_names=names)
    out = tmp_path / "hostile.csv"
    code, err = _export(capsys, caplog, str(src), "--out", str(out))
    assert code == 0 and "spreadsheets" in err and "Traceback" not in err
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    assert [r[0] for r in rows[:len(hostile)]] == ["'" + p for p in hostile]
    labelled = [r[1] for r in rows if r[1].startswith("'=cmd")]
    assert labelled and all(not r[1].startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows)
    assert float(rows[0][2]) == pytest.approx(float(store.vectors[0, 0]))  # numbers stay numbers


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_names_that_are_not_utf8_are_exported_as_shown_everywhere(made, tmp_path: Path, capsys, caplog,
                                                                  fmt: str) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    from plm.search import EmbeddingStore

    paths = EmbeddingStore.load(made["emb"]).paths
    src = store_like(made["emb"], tmp_path / "latin1.npz", paths=["squares/caf\udce9.png", *paths[1:]])
    out = tmp_path / f"latin1.{fmt}"
    code, err = _export(capsys, caplog, str(src), "--out", str(out))
    assert code == 0 and "not valid UTF-8" in err and "Traceback" not in err, err
    if fmt == "csv":
        first = out.read_text(encoding="utf-8").splitlines()[1]
    else:
        import pyarrow.parquet as pq

        first = pq.read_table(out).column("path")[0].as_py()
    assert first.startswith("squares/caf\\xe9.png")


def test_rows_that_cannot_be_searched_are_left_out_and_counted(made: dict[str, Path], tmp_path: Path, capsys,
                                                               caplog) -> None:
    import numpy as np

    from plm.search import EmbeddingStore

    store = EmbeddingStore.load(made["emb"])
    vectors = store.vectors.copy()
    vectors[0, 3], vectors[1, 0], vectors[2] = np.nan, np.inf, 0.0
    src = store_like(made["emb"], tmp_path / "bad.npz", vectors=vectors)
    out = tmp_path / "bad.csv"
    code, err = _export(capsys, caplog, str(src), "--out", str(out))
    assert code == 0 and "left out 2 NaN or infinite and 1 all-zero vector(s)" in err, err
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    assert [r[0] for r in rows] == store.paths[3:] and "nan" not in out.read_text().lower()
    none_left = store_like(made["emb"], tmp_path / "zeros.npz", vectors=np.zeros_like(vectors))
    code, err = _export(capsys, caplog, str(none_left), "--out", str(tmp_path / "zeros.csv"))
    assert code == 2 and "no vector that can be exported" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "zeros.csv").exists()
