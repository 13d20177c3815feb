"""plm.viz: figure helpers return real PNGs; the HTML builder escapes everything it is given."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plm.viz import embedding_map_png, project_2d, retrieval_gallery_png, retrieval_rows, training_curves_png
from plm.viz.html import Page, Tile, escape, image_data_uri, png_data_uri

HOSTILE = '<script>alert("x")</script>&<img src=x onerror=alert(1)>.jpg'


def _png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)


def _blobs(rng: np.random.Generator, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % 3
    centres = rng.standard_normal((3, 16)) * 5
    return (centres[labels] + rng.standard_normal((n, 16))).astype(np.float32), labels


def test_project_2d_separates_clusters(rng: np.random.Generator) -> None:
    x, y = _blobs(rng)
    for method in ("tsne", "pca"):
        xy = project_2d(x, method=method)
        assert xy.shape == (60, 2) and np.isfinite(xy).all()
        centroids = np.stack([xy[y == c].mean(0) for c in range(3)])
        within = max(np.linalg.norm(xy[y == c] - centroids[c], axis=1).mean() for c in range(3))
        between = min(np.linalg.norm(centroids[a] - centroids[b]) for a in range(3) for b in range(a + 1, 3))
        assert between > within
    assert project_2d(x[:2]).shape == (2, 2)  # too few points for t-SNE: PCA
    with pytest.raises(ValueError, match="method must be one of"):
        project_2d(x, method="mds")


def test_embedding_map_is_a_coloured_png(rng: np.random.Generator) -> None:
    x, y = _blobs(rng)
    img = _png(embedding_map_png(x, y, title="demo", class_names={0: "zero", 1: "one", 2: "two"}, method="pca"))
    assert img.shape[0] > 200 and img.std() > 10
    saturated = (img.max(axis=2) - img.min(axis=2)) > 80  # coloured points, not just grey axes
    assert saturated.sum() > 100
    folder_labels = ["cats" if v == 0 else "dogs" for v in y]  # sub-folder names work as labels too
    assert _png(embedding_map_png(x, folder_labels, coords=rng.standard_normal((60, 2)))).std() > 10
    with pytest.raises(ValueError, match="labels"):
        embedding_map_png(x, y[:10])


def test_training_curves(rng: np.random.Generator) -> None:
    history = [{"epoch": e, "loss": 1.0 / e, "R@1": 0.5 + e / 100, "note": "text", "lr": None} for e in range(1, 6)]
    img = _png(training_curves_png(history))
    assert img.std() > 10 and img.shape[1] > img.shape[0]  # two plots side by side
    _png(training_curves_png(history, keys=["loss"], title="only loss"))
    with pytest.raises(ValueError, match="history is empty"):
        training_curves_png([])
    with pytest.raises(ValueError, match="no numeric metric"):
        training_curves_png([{"epoch": 1, "note": "x"}])


def test_curve_points_keep_epoch_zero() -> None:
    from plm.viz.curves import curve_points

    history = [{"epoch": 0, "val": 0.5}, {"epoch": 1, "loss": 2.0, "val": 0.6}, {"loss": 1.0, "val": float("nan")}]
    assert curve_points(history, "val") == [(0.0, 0.5), (1.0, 0.6)]
    assert curve_points(history, "loss") == [(1.0, 2.0), (3.0, 1.0)]


def test_retrieval_rows_and_gallery(rng: np.random.Generator) -> None:
    x, y = _blobs(rng, 30)
    rows = retrieval_rows(x, [0, 1, 2], k=4, labels=y)
    assert [r.query for r in rows] == [0, 1, 2]
    for r in rows:
        assert r.query not in r.results and len(r.results) == 4
        assert r.correct == [bool(y[j] == y[r.query]) for j in r.results]
        assert r.distances == sorted(r.distances)
    assert all(all(r.correct) for r in rows)  # well-separated blobs: every neighbour is right
    colours = {0: (230, 30, 30), 1: (30, 200, 30), 2: (30, 30, 230)}
    img = _png(retrieval_gallery_png(rows, lambda i: Image.new("RGB", (24, 24), colours[int(y[i])]), labels=y,
                                     title="gallery"))
    green = (img[..., 1] > 140) & (img[..., 0] < 100) & (img[..., 2] < 100)
    assert green.sum() > 200  # right-answer borders drawn (and green tiles)
    assert retrieval_rows(x, [0], k=2)[0].correct is None


def test_escape_and_data_uris() -> None:
    assert escape(HOSTILE).count("<") == 0 and "&lt;script&gt;" in escape(HOSTILE)
    assert escape('a"b\'c') == "a&quot;b&#x27;c"
    uri = image_data_uri(Image.new("RGB", (300, 150), (10, 200, 30)), max_side=64)
    thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert uri.startswith("data:image/png;base64,") and max(thumb.size) == 64
    with pytest.raises(ValueError, match="PNG bytes"):
        png_data_uri(b"GIF89a")


def test_page_escapes_every_user_string(tmp_path: Path) -> None:
    page = Page(HOSTILE, subtitle=HOSTILE)
    sec = page.section(HOSTILE, text=HOSTILE)
    sec.table([HOSTILE, "n"], [[HOSTILE, 1.23456], ["x", None]], caption=HOSTILE)
    sec.figure(training_curves_png([{"loss": 1.0}, {"loss": 0.5}]), caption=HOSTILE)
    sec.gallery_row([Tile(Image.new("RGB", (8, 8)), caption=HOSTILE, detail=HOSTILE, mark="query"),
                     Tile(None, caption=HOSTILE, mark="wrong")], heading=HOSTILE)
    text = page.render()
    assert "<script" not in text and "onerror=alert" not in text.replace("onerror=alert(1)&gt;", "")
    assert text.count("&lt;script&gt;") >= 9 and "1.2346" in text and "<td>-</td>" in text
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 2
    assert page.write(tmp_path / "p.html").read_text(encoding="utf-8") == text
    with pytest.raises(ValueError, match="mark must be one of"):
        Tile(None, mark="maybe")
