"""plm embed → plm index → plm search, end to end on a generated folder, and the CLI's clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.shapes import make_shapes_folder
from plm.cli import main

BACKBONE = ["--backbone", "efficientnet_lite0", "--image-size", "32"]
HOSTILE_DIR = "<b onmouseover=alert(1)>circles"
HOSTILE_FILE = "<script>alert(1)<.png"

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("search")
    root = tmp / "imgs"
    make_shapes_folder(root, per_class=8)
    (root / "circles").rename(root / HOSTILE_DIR)
    shutil.copy(root / "squares" / "square_003.jpg", root / "squares" / HOSTILE_FILE)
    emb, exact, hnsw = tmp / "emb.npz", tmp / "exact.npz", tmp / "hnsw.npz"
    assert main(["embed", str(root), *BACKBONE, "--out", str(emb), "--quiet"]) == 0
    assert main(["index", str(emb), "--out", str(exact)]) == 0
    assert main(["index", str(emb), "--out", str(hnsw), "--kind", "hnsw", "--M", "8"]) == 0
    return {"tmp": tmp, "root": root, "emb": emb, "exact": exact, "hnsw": hnsw}


def _one_line_error(capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_round_trip_finds_the_query_itself_first(built: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    root = built["root"]
    outside = built["tmp"] / "query_copy.png"  # the same picture, from outside the indexed folder
    shutil.copy(root / "triangles" / "triangle_004.png", outside)
    queries = [root / "squares" / "square_005.jpg", root / HOSTILE_DIR / "circle_002.png", outside]
    out = built["tmp"] / "r.json"
    assert main(["search", str(built["exact"]), *map(str, queries), "-k", "5", "--json", str(out),
                 "--no-exclude-self"]) == 0
    printed = capsys.readouterr().out
    assert "query: " in printed and "squares/square_005.jpg" in printed
    data = json.loads(out.read_text())
    assert [q["query"] for q in data["queries"]] == [str(q) for q in queries]
    expected_first = ["squares/square_005.jpg", f"{HOSTILE_DIR}/circle_002.png", "triangles/triangle_004.png"]
    for q, first in zip(data["queries"], expected_first, strict=True):
        assert len(q["results"]) == 5 and q["results"][0]["path"] == first
        assert q["results"][0]["distance"] == pytest.approx(0.0, abs=1e-5)
        dists = [r["distance"] for r in q["results"]]
        assert dists == sorted(dists) and all(0 <= d <= 2 for d in dists)
        assert Path(q["results"][0]["file"]).is_file()
    same_class = [r["label"] for r in data["queries"][0]["results"][:3]]
    assert same_class.count("squares") >= 2  # shapes cluster by class even with a 32-px backbone


@pytest.mark.slow
def test_hnsw_and_exact_agree_and_folders_expand(built: dict[str, Path]) -> None:
    out_e, out_h = built["tmp"] / "e.json", built["tmp"] / "h.json"
    folder = built["root"] / "triangles"
    assert main(["search", str(built["exact"]), str(folder), "-k", "3", "--json", str(out_e)]) == 0
    assert main(["search", str(built["hnsw"]), str(folder), "-k", "3", "--json", str(out_h)]) == 0
    exact, approx = (json.loads(p.read_text())["queries"] for p in (out_e, out_h))
    assert len(exact) == 8
    top_e = [[r["path"] for r in q["results"]] for q in exact]
    top_h = [[r["path"] for r in q["results"]] for q in approx]
    assert np.mean([len(set(a) & set(b)) / 3 for a, b in zip(top_e, top_h, strict=True)]) >= 0.9


def test_index_reports_recall_of_approximate_kinds(built: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(["index", str(built["emb"]), "--out", str(built["tmp"] / "ivf.npz"), "--kind", "ivf"]) == 0
    text = capsys.readouterr().out
    assert "recall@10 vs exact search on 25 of the collection's own vectors" in text
    assert "estimated recall@10: 1.0000" in text or "estimated recall@10: 0.9" in text
    assert main(["index", str(built["emb"]), "--out", str(built["tmp"] / "pq.npz"), "--kind", "pq"]) == 2
    _one_line_error(capsys, "at least 64 vectors", "use the exact kind")


def test_search_html_escapes_hostile_names(built: dict[str, Path]) -> None:
    page = built["tmp"] / "gallery.html"
    assert main(["search", str(built["exact"]), str(built["root"] / "squares" / HOSTILE_FILE), "-k", "4",
                 "--html", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text and "<b onmouseover" not in text
    assert "&lt;script&gt;alert(1)&lt;.png" in text
    assert text.count('<img src="data:image/png;base64,') == 5  # the query and its 4 results


def test_missing_index(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["search", str(tmp_path / "none.npz"), str(tmp_path)]) == 2
    _one_line_error(capsys, "file not found", "plm index")


def test_query_that_is_not_an_image(built: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    fake = built["tmp"] / "notes.jpg"
    fake.write_text("a text file with an image extension\n")
    assert main(["search", str(built["exact"]), str(fake)]) == 2
    _one_line_error(capsys, "is not an image plm can read")
    assert main(["search", str(built["exact"]), str(built["tmp"] / "nope.jpg")]) == 2
    _one_line_error(capsys, "query not found")


def test_dimension_and_model_mismatch(built: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    from plm.models import ModelConfig, create_model, save_model

    query = str(built["root"] / "squares" / "square_000.png")
    small = built["tmp"] / "dim16.pt"
    save_model(create_model(ModelConfig(embed_dim=16, image_size=32), pretrained=False), small)
    assert main(["search", str(built["exact"]), query, "--checkpoint", str(small)]) == 2
    _one_line_error(capsys, "dimension mismatch", "1280-d", "16-d")
    other = built["tmp"] / "random1280.pt"
    save_model(create_model(ModelConfig(embed_dim=None, pooling="avg", image_size=32), pretrained=False), other)
    assert main(["search", str(built["exact"]), query, "--checkpoint", str(other)]) == 2
    _one_line_error(capsys, "model mismatch")


def test_embeddings_with_wrong_dimension_are_refused_by_index(built: dict[str, Path], capsys) -> None:
    from plm.search import EmbeddingStore

    store = EmbeddingStore.load(built["emb"])
    store.vectors = store.vectors[:, :64]
    store.save(built["tmp"] / "cut.npz")
    assert main(["index", str(built["tmp"] / "cut.npz"), "--out", str(built["tmp"] / "x.npz")]) == 2
    _one_line_error(capsys, "dimension mismatch", "64-d", "1280-d")
    assert main(["index", str(built["tmp"] / "none.npz"), "--out", str(built["tmp"] / "x.npz")]) == 2
    _one_line_error(capsys, "file not found", "plm embed")


def test_index_says_when_a_search_setting_does_not_apply(built: dict[str, Path], tmp_path: Path, caplog) -> None:
    """Issue 27: ``--ef-search`` (or --nprobe, --k-factor …) given for an exact index was ignored silently."""
    out = tmp_path / "exact.npz"
    assert main(["index", str(built["emb"]), "--out", str(out), "--kind", "exact", "--ef-search", "64",
                 "--nprobe", "4"]) == 0
    assert "--ef-search applies to hnsw indexes only; ignored for this exact index" in caplog.text
    assert "--nprobe applies to ivf indexes only" in caplog.text
