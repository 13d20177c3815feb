"""Issue 24, item 6: the demo report, rendered in headless Chromium and measured there.

Before issue 24 the figure titles ("pretrained", "plm") were drawn over the 4th tile of each gallery's
first row, captions were about 5 px at the page's width, the two galleries were stacked (pretrained and
PLM results of one query never side by side), the t-SNE maps were about 330 px with no legend for
glyphs' 42 classes, nothing said why the initial and kmeans rows were identical, and the page had no
command, seed, version or date. The report is built from a small synthetic run here (no training).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.browser import CHROMIUM, check_page, chromium
from helpers.shapes import SHAPES, shape_image

CLASSES = 24  # more than a matplotlib legend inside a map can hold
GEOMETRY = ("<script nonce=\"plmprobe\">window.addEventListener('load',()=>{"
            "const r=e=>{const b=e.getBoundingClientRect();return [b.left,b.top,b.right,b.bottom]};"
            "const all=s=>Array.from(document.querySelectorAll(s));"
            "document.body.setAttribute('data-geometry',JSON.stringify({"
            "heads:all('h1,h2,h3,.colhead,figcaption,caption').map(r),tiles:all('.tile img').map(r),"
            "captions:all('.cmp .tile div').map(e=>parseFloat(getComputedStyle(e).fontSize)),"
            "maps:all('.maps img').map(r),strips:all('.cmp .strip').map(r),"
            "width:document.documentElement.clientWidth,legend:all('.maplegend .key').map(e=>e.textContent)}))})"
            "</script>")


def _data():
    from plm.search.index import unit_rows
    from plm.viz.demo_report import ReportData, ReportViews, run_info

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(CLASSES), 6)
    kinds = list(SHAPES.values())
    images = [shape_image(kinds[y % 3][0], tuple(int(v) for v in rng.integers(0, 230, 3)), rng) for y in labels]
    names = {c: f"class-{c:02d}" for c in range(CLASSES)}
    before = unit_rows(rng.standard_normal((len(labels), 16)))
    after = unit_rows(np.eye(CLASSES)[labels] * 3 + 0.4 * rng.standard_normal((len(labels), CLASSES)))
    metric = {"recall_at": {"1": 0.5, "2": 0.6}, "map_at_r": 0.2, "r_precision": 0.25, "nmi": 0.4}
    methods = {"pretrained": metric, "initial": {**metric, "map_at_r": 0.21},
               "plm": {**metric, "recall_at": {"1": 0.7, "2": 0.8}, "map_at_r": 0.3},
               "kmeans": {**metric, "map_at_r": 0.21}}
    history = [{"epoch": e, "loss": 1 / e, "val_map_at_r": 0.2 + 0.01 * e} for e in range(1, 4)]
    verdict = "training did not help: no epoch beat the pretrained features on the validation classes"
    return ReportData("synthetic shapes", methods, "plm", {"plm": history, "kmeans": history},
                      ReportViews(images.__getitem__, labels, names, before, after),
                      run_info(["plm", "demo", "--quick", "--seeds", "0"], [0], {"dataset": "synthetic shapes"}),
                      {"kmeans": verdict})


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5


def test_equal_rows_are_found() -> None:
    from plm.viz.demo_report import equal_rows

    assert equal_rows(_data().methods) == {"kmeans": "initial"}


def test_the_page_says_how_it_was_made_and_why_rows_are_equal() -> None:
    import plm
    from plm.viz.demo_report import demo_report_page

    text = demo_report_page(_data()).render()
    assert "plm demo --quick --seeds 0" in text and f"<td>{plm.__version__}</td>" in text and " UTC</td>" in text
    assert re.search(r"<b>kmeans</b> has exactly the numbers of <b>initial</b>: training did not help", text)
    assert "<b>plm</b> has exactly" not in text


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_the_report_reads_well_in_chromium(tmp_path: Path) -> None:
    from plm.viz.demo_report import demo_report_page

    page = demo_report_page(_data()).write(tmp_path / "report.html")
    check_page(page, tmp_path, min_images=CLASSES * 13 + 4)  # console clean, images decode, screenshot not blank
    probed = tmp_path / "geometry.html"
    probed.write_text(page.read_text(encoding="utf-8")
                      .replace("default-src 'none';", "default-src 'none'; script-src 'nonce-plmprobe';")
                      .replace("</body>", GEOMETRY + "</body>"), encoding="utf-8")
    run = chromium(probed, tmp_path, "--dump-dom", "--window-size=1280,2400")
    found = re.search(r'data-geometry="([^"]*)"', run.stdout)
    assert run.returncode == 0 and found, run.stderr[-2000:]
    g = json.loads(found.group(1).replace("&quot;", '"'))
    # no title, heading or caption box is drawn over a thumbnail
    assert not [(h, t) for h in g["heads"] for t in g["tiles"] if _overlap(h, t)]
    # captions are text at a readable size, not shrunk with a picture
    assert g["captions"] and min(g["captions"]) >= 11
    # the maps: about half the page each, side by side, one legend naming every class
    (m1, m2) = g["maps"]
    assert min(m1[2] - m1[0], m2[2] - m2[0]) >= 0.4 * g["width"] and abs(m1[1] - m2[1]) < 2 and m2[0] > m1[2]
    assert sorted(g["legend"], key=lambda s: s[-2:]) == ["\u25cf\u25a0\u25b2\u25c6"[c // 20] + f"class-{c:02d}"
                                                          for c in range(CLASSES)]
    # pretrained and trained results of one query side by side, in one row per query
    strips = g["strips"]
    assert len(strips) == 2 * CLASSES
    for pre, post in zip(strips[::2], strips[1::2], strict=True):
        assert abs(pre[1] - post[1]) < 2 and post[0] > pre[2] and post[2] <= g["width"]
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_a_gallery_figure_title_is_above_its_tiles() -> None:
    """The PNG gallery (plm.viz API) drew its title over the first row's tiles."""
    import io

    from PIL import Image

    from plm.viz import retrieval_gallery_png, retrieval_rows

    data = _data()
    rows = retrieval_rows(data.views.after, [0, 6], k=6, labels=data.views.labels)
    plain = Image.open(io.BytesIO(retrieval_gallery_png(rows, data.views.load_image)))
    titled = Image.open(io.BytesIO(retrieval_gallery_png(rows, data.views.load_image, title="pretrained")))
    assert titled.height >= plain.height + 12  # the title takes its own band above the tiles
