"""plm map end to end on a small folder: one dot per image with its thumbnail, coloured by class,
every name escaped, rendered cleanly in headless Chromium."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from helpers.browser import CHROMIUM, HOSTILE_LABEL, HOSTILE_NAME, PROBE, Elements, chromium, console
from helpers.shapes import make_shapes_folder, store_like
from plm.cli import main


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("map")
    root = tmp / "imgs"
    make_shapes_folder(root, per_class=6)
    (root / "squares").rename(root / HOSTILE_LABEL)
    shutil.copy(root / HOSTILE_LABEL / "square_001.jpg", root / HOSTILE_LABEL / HOSTILE_NAME)
    emb = tmp / "e.npz"
    assert main(["embed", str(root), "--backbone", "efficientnet_lite0", "--image-size", "32", "--out", str(emb),
                 "--quiet"]) == 0
    page = tmp / "map.html"
    assert main(["map", str(emb), "--html", str(page), "--method", "tsne"]) == 0
    return {"tmp": tmp, "root": root, "emb": emb, "page": page}


def test_map_has_a_dot_and_a_thumbnail_per_image(mapped: dict[str, Path]) -> None:
    text = mapped["page"].read_text(encoding="utf-8")
    parser = Elements()
    parser.feed(text)
    dots = [a for t, a in parser.tags if t == "div" and "pt" in a.get("class", "").split()]
    imgs = [a for t, a in parser.tags if t == "img"]
    assert len(dots) == 19 and len(imgs) == 19 and all(a["src"].startswith("data:image/jpeg;base64,") for a in imgs)
    assert not [t for t, _ in parser.tags if t == "script"]
    assert not [a for _, a in parser.tags if any(k.startswith("on") for k in a)]
    colours = {re.search(r"background:(#[0-9a-f]{6})", a["style"]).group(1) for a in dots}
    assert len(colours) == 3  # one per class sub-folder
    for a in dots:
        left, top = (float(v) for v in re.findall(r"(?:left|top):([\d.]+)%", a["style"]))
        assert 0 <= left <= 100 and 0 <= top <= 100
    assert "&lt;script&gt;alert(1)&lt;.png" in text and "&lt;img src=x onerror=alert(2)&gt;" in text
    assert HOSTILE_NAME not in text and HOSTILE_LABEL not in text


def test_unlabelled_folder_gets_one_colour_and_sampling_caps_the_points(tmp_path: Path, capsys) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    for p in make_shapes_folder(tmp_path / "src", per_class=3):
        shutil.copy(p, root / p.name)
    emb = tmp_path / "e.npz"
    assert main(["embed", str(root), "--backbone", "efficientnet_lite0", "--image-size", "32", "--out", str(emb),
                 "--quiet"]) == 0
    assert main(["map", str(emb), "--html", str(tmp_path / "m.html"), "--max-points", "5", "--method", "pca"]) == 0
    text = (tmp_path / "m.html").read_text()
    assert text.count('class="pt') == 5 and 'class="keys"' not in text
    assert "5 of 9 images" in text


def test_map_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["map", str(tmp_path / "missing.npz"), "--html", str(tmp_path / "m.html")]) == 2
    err = capsys.readouterr().err
    assert "file not found" in err and "Traceback" not in err
    assert not (tmp_path / "m.html").exists()


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed")
def test_map_renders_in_chromium(mapped: dict[str, Path], tmp_path: Path) -> None:
    """Loads without a console message, every thumbnail decodes, the dots are drawn, names stay text."""
    import json

    import numpy as np
    from PIL import Image

    text = mapped["page"].read_text(encoding="utf-8")
    assert "default-src 'none'" in text
    probe = tmp_path / "probe-map.html"
    probe.write_text(text.replace("default-src 'none';", "default-src 'none'; script-src 'nonce-plmprobe';")
                     .replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dump = chromium(probe, tmp_path, "--dump-dom")
    assert dump.returncode == 0 and console(dump.stderr) == [], dump.stderr[-2000:]
    states = json.loads(re.search(r'data-probe="([^"]*)"', dump.stdout).group(1).replace("&quot;", '"'))
    assert len(states) == 19 and all(ok and w > 0 and h > 0 for ok, w, h in states), states
    assert "&lt;script&gt;alert(1)&lt;.png" in dump.stdout
    shot = tmp_path / "map.png"
    run = chromium(mapped["page"], tmp_path, f"--screenshot={shot}", "--window-size=1280,1200", "--hide-scrollbars")
    assert run.returncode == 0 and shot.is_file() and console(run.stderr) == [], run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 100
    assert coloured.sum() >= 19 * 40, "the map's dots are not drawn"


# ------------------------------------------------------------------------------ issue 27

SRC = Path(__file__).resolve().parents[2] / "src"


def _plm(*args: str):
    """``python -m plm ARGS`` in a child process: a crash in native code (t-SNE) shows as its exit status."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "plm", *args], capture_output=True, text=True, env=env, timeout=600)


def test_identical_vectors_make_a_grid_map_not_a_crash(mapped: dict[str, Path], tmp_path: Path) -> None:
    """A folder of identical images: t-SNE's PCA start divided by a zero deviation and crashed (rc 139)."""
    import numpy as np

    from plm.search import EmbeddingStore

    n = len(EmbeddingStore.load(mapped["emb"]))
    vectors = np.repeat(EmbeddingStore.load(mapped["emb"]).vectors[:1], n, axis=0)
    same = store_like(mapped["emb"], tmp_path / "same.npz", vectors=vectors)
    page = tmp_path / "same.html"
    run = _plm("map", str(same), "--html", str(page), "--method", "tsne")
    assert run.returncode == 0, run.stderr[-2000:]
    text = page.read_text(encoding="utf-8")
    positions = set(re.findall(r"left:([\d.]+)%;top:([\d.]+)%", text))
    assert text.count('class="pt') == n and len(positions) == n  # side by side, none hidden under another
    assert "identical vectors" in text


@pytest.mark.parametrize("poison,needle", [("zero", "all zeros"), ("nan", "NaN or infinite")])
def test_vectors_that_cannot_be_searched_are_refused_as_by_index(mapped, tmp_path: Path, poison: str,
                                                                 needle: str) -> None:
    import numpy as np

    from plm.search import EmbeddingStore

    vectors = EmbeddingStore.load(mapped["emb"]).vectors.copy()
    if poison == "zero":
        vectors[:] = 0.0
    else:
        vectors[0, 0] = np.nan
    bad = store_like(mapped["emb"], tmp_path / f"{poison}.npz", vectors=vectors)
    page = tmp_path / "m.html"
    run = _plm("map", str(bad), "--html", str(page), "--method", "tsne")
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1 and needle in run.stderr, run.stderr[-2000:]
    assert not page.exists()


def test_a_path_holding_a_nul_byte_loses_one_thumbnail_not_the_page(mapped, tmp_path: Path, capsys) -> None:
    from plm.search import EmbeddingStore

    paths = EmbeddingStore.load(mapped["emb"]).paths
    damaged = store_like(mapped["emb"], tmp_path / "nul.npz", paths=[paths[0] + "\x00x", *paths[1:]])
    page = tmp_path / "nul.html"
    assert main(["map", str(damaged), "--html", str(page), "--method", "pca"]) == 0, capsys.readouterr().err
    assert page.read_text(encoding="utf-8").count("<div>unreadable</div>") == 1
    idx, gallery = tmp_path / "nul-idx.npz", tmp_path / "gallery.html"
    assert main(["index", str(damaged), "--out", str(idx)]) == 0
    query = mapped["root"] / "circles" / "circle_001.jpg"
    assert main(["search", str(idx), str(query), "-k", str(len(paths)), "--html", str(gallery)]) == 0, \
        capsys.readouterr().err
    assert gallery.read_text(encoding="utf-8").count('class="missing"') == 1
