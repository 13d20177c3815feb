"""Pages built by plm.viz.html, rendered in headless Chromium: they load cleanly, show their images,
and hostile file names stay text.

Skipped when Chromium is not installed (.ci/run installs it, so CI runs them).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_search_helpers import make_shapes_folder, shape_image

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")]
HOSTILE_NAME = "<script>alert(1)<.png"
HOSTILE_LABEL = "<img src=x onerror=alert(2)>"
# Appended to a copy of each page: once loaded, it records every image's decode state on <body>.
# It carries a nonce that the copy's CSP allows; the page's own policy stays in force otherwise.
PROBE = ("<script nonce=\"plmprobe\">window.addEventListener('load',()=>{document.body.setAttribute('data-probe',"
         "JSON.stringify(Array.from(document.images).map(i=>[i.complete,i.naturalWidth,i.naturalHeight])))})</script>")


def _chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", f"--user-data-dir={tmp / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
           *args, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _console(stderr: str) -> list[str]:
    """Messages the page itself logged: script errors, CSP violations, failed loads."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Failed to load resource" in line]


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))


def check_page(page: Path, tmp: Path, min_images: int) -> str:
    """Render ``page`` in Chromium and check it thoroughly; returns the dumped DOM.

    One run loads a probed copy of the page (its CSP kept, plus a nonce for the probe script) and
    dumps the DOM: no console message (script error, CSP violation, failed load), no script but the
    probe, no event-handler attribute, every <img> a ``data:`` URI decoding to a non-blank picture
    and decoded by the browser. A second run screenshots the page itself.
    """
    text = page.read_text(encoding="utf-8")
    assert "default-src 'none'" in text, "the page lost its Content-Security-Policy"
    probe_page = tmp / f"probe-{page.name}"
    probe_page.write_text(text.replace("default-src 'none';", "default-src 'none'; script-src 'nonce-plmprobe';")
                          .replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dump = _chromium(probe_page, tmp, "--dump-dom")
    assert dump.returncode == 0, dump.stderr[-2000:]
    assert _console(dump.stderr) == [], _console(dump.stderr)
    dom = dump.stdout
    parser = _Elements()
    parser.feed(dom)
    scripts = [a for t, a in parser.tags if t == "script"]
    assert len(scripts) == 1 and scripts[0].get("nonce") is not None, "a <script> element made it into the page"
    assert not [a for t, a in parser.tags if any(k.startswith("on") for k in a)], "an event-handler attribute exists"
    images = [a["src"] for t, a in parser.tags if t == "img"]
    assert len(images) >= min_images
    for src in images:
        assert src.startswith("data:image/"), src[:80]
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")
        assert np.asarray(img, dtype=np.float32).std() > 2.0, "an embedded image is blank"
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, "the load event never fired"
    states = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(states) == len(images) and all(ok and w > 0 and h > 0 for ok, w, h in states), states

    shot = tmp / f"{page.stem}.png"
    run = _chromium(page, tmp, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    assert _console(run.stderr) == [], _console(run.stderr)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (2400, 1280) and pixels.std() > 15, "the screenshot is (nearly) blank"
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 60
    assert coloured.sum() > 2000, "no coloured figure or thumbnail visible"
    return dom


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
