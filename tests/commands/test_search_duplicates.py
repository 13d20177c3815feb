"""Issue 24, items 4 and 5: ``plm search`` leaves the query itself out, ``plm duplicates`` finds exact and
near copies, and a moved collection is refused (or warned about) as ``plm serve`` does.

Before issue 24 ``plm search idx.npz coll/x.png`` returned x.png itself at rank 1 (d = 0), nothing found
duplicates, and ``plm search … --html`` of a moved collection drew grey "missing" tiles without a word.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from helpers.shapes import make_shapes_folder
from plm.cli import main

BACKBONE = ["--backbone", "efficientnet_lite0", "--image-size", "32"]


@pytest.fixture(scope="module")
def coll(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Shapes plus an exact copy (another name) and a near copy (JPEG re-save, 10% brighter) of one image."""
    tmp = tmp_path_factory.mktemp("dups")
    root = tmp / "coll"
    make_shapes_folder(root, per_class=5)
    original = root / "squares" / "square_002.png"
    shutil.copy(original, root / "squares" / "copy of square_002.png")
    img = ImageEnhance.Brightness(Image.open(original).convert("RGB")).enhance(1.1)
    img.save(root / "squares" / "square_002-resaved.jpg", quality=85)
    emb, idx = tmp / "e.npz", tmp / "i.npz"
    assert main(["embed", str(root), *BACKBONE, "--out", str(emb), "--quiet"]) == 0
    assert main(["index", str(emb), "--out", str(idx), "--quiet"]) == 0
    return {"tmp": tmp, "root": root, "emb": emb, "idx": idx, "original": original}


def _search(coll, capsys, *extra: str) -> dict:
    out = coll["tmp"] / "r.json"
    assert main(["search", str(coll["idx"]), str(coll["original"]), "-k", "4", "--json", str(out), *extra]) == 0
    capsys.readouterr()
    return json.loads(out.read_text())["queries"][0]


def test_search_leaves_the_query_itself_out(coll, capsys) -> None:
    q = _search(coll, capsys)
    paths = [r["path"] for r in q["results"]]
    assert "squares/square_002.png" not in paths and q["excluded"] == "squares/square_002.png"
    assert paths[0] == "squares/copy of square_002.png" and q["results"][0]["distance"] == pytest.approx(0, abs=1e-5)
    assert len(paths) == 4
    kept = _search(coll, capsys, "--no-exclude-self")
    assert kept["results"][0]["path"] in ("squares/square_002.png", "squares/copy of square_002.png")
    assert "squares/square_002.png" in [r["path"] for r in kept["results"]] and kept["excluded"] is None
    outside = coll["tmp"] / "outside.png"  # the same picture outside the folder: nothing to leave out
    shutil.copy(coll["original"], outside)
    out = coll["tmp"] / "o.json"
    assert main(["search", str(coll["idx"]), str(outside), "-k", "2", "--json", str(out)]) == 0
    first = json.loads(out.read_text())["queries"][0]
    assert first["excluded"] is None and first["results"][0]["distance"] == pytest.approx(0, abs=1e-5)


def test_duplicates_finds_exact_and_near_copies(coll, capsys) -> None:
    out_json, out_csv = coll["tmp"] / "d.json", coll["tmp"] / "d.csv"
    assert main(["duplicates", str(coll["idx"]), "--json", str(out_json), "--csv", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert "exact duplicates: 1 group(s), 2 files (1 redundant copies)" in printed
    data = json.loads(out_json.read_text())
    assert data["format"] == "plm-duplicates" and data["distance"] == "1 - cosine similarity"
    assert data["exact"] == [{"paths": ["squares/copy of square_002.png", "squares/square_002.png"],
                              "size": coll["original"].stat().st_size, "sha256": data["exact"][0]["sha256"]}]
    near = [set(g["paths"]) for g in data["near"]]
    assert {"squares/square_002.png", "squares/copy of square_002.png", "squares/square_002-resaved.jpg"} in near
    rows = list(csv.reader(io.StringIO(out_csv.read_text(encoding="utf-8"))))
    assert rows[0] == ["group", "kind", "path", "distance"]
    assert {r[2] for r in rows[1:] if r[1] == "exact"} == {"squares/copy of square_002.png", "squares/square_002.png"}
    assert main(["duplicates", str(coll["idx"]), "--threshold", "0"]) == 0  # exact copies only
    assert "near duplicates (distance <= 0, 1 - cosine similarity): 0 group(s)" in capsys.readouterr().out


def test_distinct_images_are_not_near_duplicates(tmp_path, capsys) -> None:
    root = tmp_path / "coll"
    make_shapes_folder(root, per_class=4, seed=3)
    assert main(["embed", str(root), *BACKBONE, "--out", str(tmp_path / "e.npz"), "--quiet"]) == 0
    assert main(["index", str(tmp_path / "e.npz"), "--out", str(tmp_path / "i.npz"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["duplicates", str(tmp_path / "i.npz"), "--json", str(tmp_path / "d.json")]) == 0
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["exact"] == [] and data["near"] == []


def test_near_groups_cover_every_index_kind(coll) -> None:
    pytest.importorskip("faiss")
    from plm.search import EmbeddingStore, VectorIndex
    from plm.search.duplicates import near_groups

    vectors = EmbeddingStore.load(coll["emb"]).vectors
    found = []
    for kind in ("exact", "hnsw", "ivf"):
        index = VectorIndex.build(vectors, kind)
        groups, _ = near_groups(index, 0.03, k=5)
        found.append(sorted(tuple(g.ids) for g in groups))
        np.testing.assert_allclose(index.vectors_of(0, index.count), VectorIndex.build(vectors).vectors, atol=1e-6)
    assert found[0] == found[1] == found[2] and found[0]


def test_a_moved_collection_is_refused_for_pages_and_warned_about_otherwise(coll, tmp_path, capsys, caplog) -> None:
    moved = tmp_path / "coll_moved"
    shutil.copytree(coll["root"], moved)
    emb, idx = tmp_path / "e.npz", tmp_path / "i.npz"
    assert main(["embed", str(moved), *BACKBONE, "--out", str(emb), "--quiet"]) == 0
    assert main(["index", str(emb), "--out", str(idx), "--quiet"]) == 0
    query = tmp_path / "q.png"
    shutil.copy(coll["original"], query)
    shutil.rmtree(moved)  # mv coll coll_moved, as the user did
    capsys.readouterr()
    page = tmp_path / "moved.html"
    assert main(["search", str(idx), str(query), "--html", str(page)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is missing" in err and "--root DIR" in err, err
    assert not page.exists()
    with caplog.at_level("WARNING"):
        assert main(["search", str(idx), str(query), "-k", "2"]) == 0
    assert any("is missing" in r.getMessage() and "--root" in r.getMessage() for r in caplog.records)
    assert main(["search", str(idx), str(query), "--html", str(page), "--root", str(coll["root"])]) == 0
    assert main(["map", str(emb), "--html", str(tmp_path / "m.html"), "--method", "pca"]) == 2
    assert "is missing" in capsys.readouterr().err
    assert main(["duplicates", str(idx)]) == 2
    assert "--root DIR" in capsys.readouterr().err
