"""Pages built by plm.viz.html, rendered in headless Chromium: they load cleanly, show their images,
and hostile file names stay text.

Skipped when Chromium is not installed (.ci/run installs it, so CI runs them).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.browser import CHROMIUM, HOSTILE_LABEL, HOSTILE_NAME, check_page
from helpers.shapes import make_shapes_folder, shape_image

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")]


@pytest.mark.slow
def test_report_page_renders(tmp_path: Path) -> None:
    from plm.search.index import unit_rows
    from plm.viz import embedding_map_png, retrieval_gallery_png, retrieval_rows, training_curves_png
    from plm.viz.html import Page, Tile

    rng = np.random.default_rng(0)
    labels = np.arange(45) % 3
    kinds = [("ellipse", (220, 40, 40)), ("rectangle", (40, 170, 60)), ("polygon", (50, 80, 220))]
    images = [shape_image(*kinds[y], rng) for y in labels]
    before = rng.standard_normal((45, 16)).astype(np.float32)
    after = unit_rows(np.eye(3, 16)[labels] * 4 + 0.5 * rng.standard_normal((45, 16)))
    history = [{"epoch": e, "loss": 1 / e, "R@1": 0.6 + 0.05 * e} for e in range(1, 6)]

    page = Page("plm demo report", subtitle=f"synthetic shapes · {HOSTILE_LABEL}")
    page.section("Training").figure(training_curves_png(history), caption="loss and R@1 per epoch")
    maps = page.section("Embedding maps", text="before and after training")
    maps.figure(embedding_map_png(before, labels, title="before"), caption="t-SNE before")
    maps.figure(embedding_map_png(after, labels, title="after", class_names={0: HOSTILE_LABEL}), caption="after")
    rows = retrieval_rows(after, [0, 1, 2], k=4, labels=labels)
    gallery = page.section("Retrieval")
    gallery.figure(retrieval_gallery_png(rows, images.__getitem__, labels=labels), caption="right / wrong")
    gallery.table(["method", "R@1"], [["backbone", 0.61], [HOSTILE_LABEL, 0.93]])
    row = rows[0]
    gallery.gallery_row([Tile(images[row.query], HOSTILE_NAME, "query", "query")]
                        + [Tile(images[j], f"img_{j}.png", f"d={d:.3f}", "right" if ok else "wrong")
                           for j, d, ok in zip(row.results, row.distances, row.correct, strict=True)],
                        heading=HOSTILE_NAME)
    dom = check_page(page.write(tmp_path / "report.html"), tmp_path, min_images=9)
    assert "plm demo report" in dom and "&lt;script&gt;alert(1)&lt;.png" in dom
    assert "&lt;img src=x onerror=alert(2)&gt;" in dom


@pytest.mark.slow
def test_search_gallery_renders(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    from plm.cli import main

    root = tmp_path / "imgs"
    make_shapes_folder(root, per_class=3)
    (root / "squares").rename(root / HOSTILE_LABEL)
    query = root / HOSTILE_LABEL / HOSTILE_NAME
    shutil.copy(root / HOSTILE_LABEL / "square_001.jpg", query)
    model = ["--backbone", "efficientnet_lite0", "--image-size", "32"]
    assert main(["embed", str(root), *model, "--out", str(tmp_path / "e.npz"), "--quiet"]) == 0
    assert main(["index", str(tmp_path / "e.npz"), "--out", str(tmp_path / "i.npz")]) == 0
    page = tmp_path / "search.html"
    assert main(["search", str(tmp_path / "i.npz"), str(query), "-k", "5", "--html", str(page)]) == 0
    dom = check_page(page, tmp_path, min_images=6)
    assert f"query: {query}".replace("<", "&lt;").replace(">", "&gt;") in dom
    assert dom.count("&lt;script&gt;alert(1)&lt;.png") >= 2  # the query and its own copy among the results
    assert "right" in dom  # the query lies in a class folder, so results are marked
