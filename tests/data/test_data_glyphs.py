"""The glyph benchmark: faces, classes, splits, duplicates, the cap, the cache, and a clear error.

The small-set tests use the DejaVu faces that ship inside matplotlib (a plm dependency), so they
do not depend on the system's font packages.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from plm.data import DatasetNotFoundError, load_dataset
from plm.data.glyphs import (
    FONT_PACKAGES,
    SEEN,
    UNSEEN,
    GlyphOptions,
    _keep_distinct,
    build_glyph_set,
    ink_distance,
    load_glyphs,
)

OPTIONS = GlyphOptions(min_faces=3, max_per_class=4)


@pytest.fixture(scope="module")
def font_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    dst = tmp_path_factory.mktemp("fonts")
    for f in sorted(src.glob("DejaVu*.ttf")):
        shutil.copy(f, dst / f.name)
    return dst


def test_class_lists_have_no_duplicates_and_are_large() -> None:
    assert len(set(SEEN)) == len(SEEN) >= 40 and len(set(UNSEEN)) == len(UNSEEN) >= 40
    assert not set(SEEN) & set(UNSEEN)
    for lookalikes in ("Il1", "O0o"):  # at most one of each look-alike group is a class
        assert len(set(lookalikes) & set(SEEN)) <= 1
    assert not set("АВЕКМНОРСТХПФГ") & set(UNSEEN)  # Cyrillic letters that repeat Latin or Greek ones


def test_splits_are_class_disjoint_and_capped(font_dir: Path) -> None:
    train = load_glyphs("train", root=font_dir, val_classes=5, options=OPTIONS)
    val = load_glyphs("val", root=font_dir, val_classes=5, options=OPTIONS)
    test = load_glyphs("test", root=font_dir, val_classes=5, options=OPTIONS)
    tr, va, te = (set(np.unique(d.labels)) for d in (train, val, test))
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert len(va) and len(tr) + len(va) <= len(SEEN) and len(te) <= len(UNSEEN)
    assert all(train.class_names[c] in SEEN for c in tr) and all(test.class_names[c] in UNSEEN for c in te)
    for ds in (val, test):
        assert np.bincount(ds.labels).max() <= OPTIONS.max_per_class
    assert np.bincount(train.labels).max() > OPTIONS.max_per_class  # training keeps every face
    assert train.faces and all(Path(f["path"]).parent == font_dir for f in train.faces)
    img = test.load_image(0)
    assert img.size == (64, 64) and img.mode == "RGB"


def test_the_summary_lines_say_what_was_carved_out(font_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 24: "glyphs train: 49 classes, 7987 images" then "glyphs train: 37 classes, 6031 images" said nothing
    of the 12 classes held out between the two lines."""
    with caplog.at_level("INFO", logger="plm.data.glyphs"):
        seen = load_glyphs("train", root=font_dir, val_classes=0, options=OPTIONS)
        train = load_glyphs("train", root=font_dir, val_classes=5, options=OPTIONS)
        load_glyphs("val", root=font_dir, val_classes=5, options=OPTIONS)
    first, second, third = (r.getMessage() for r in caplog.records if r.getMessage().startswith("glyphs "))
    n = seen.num_classes
    assert first.startswith(f"glyphs train: all {n} seen classes (none held out for validation), {len(seen)} images")
    assert second.startswith(f"glyphs train: {train.num_classes} of the {n} seen classes (the other 5 are the "
                             f"val split), {len(train)} images")
    assert third.startswith("glyphs val: 5 seen classes held out for validation (at most 4 faces each)")


def test_no_two_kept_faces_render_alike(font_dir: Path) -> None:
    data = build_glyph_set(font_dir, OPTIONS)
    ink = 1.0 - data["images"].reshape(len(data["images"]), -1).astype(np.float32) / 255.0
    for label in np.unique(data["labels"])[::7]:
        rows = ink[data["labels"] == label]
        for i in range(len(rows)):
            others = np.delete(rows, i, axis=0)
            assert ink_distance(others, rows[i]).min() > 0.02  # distinct designs, not clones


@pytest.mark.parametrize("chunk", [1, 7, 64, 300])
@pytest.mark.parametrize("threshold", [0.1, 0.25, 0.6])
def test_keep_distinct_equals_the_pairwise_greedy_rule(chunk: int, threshold: float) -> None:
    """Each map is kept when its ink distance to every map kept before it is at least the threshold
    (whatever runs the lower bound sums over), on maps of very different ink amounts."""
    rng = np.random.default_rng(3)
    base = (rng.random((8, 300)) < rng.uniform(0.05, 0.5, size=(8, 1))).astype(np.float32)
    ink = [np.clip(base[rng.integers(8)] + (rng.random(300) < 0.05) * rng.random(300), 0, 1).astype(np.float32)
           for _ in range(60)]
    ink.append(np.zeros(300, np.float32))  # a blank map: ink_distance's floor of the denominator
    ink.append(np.zeros(300, np.float32))
    expected: list[int] = []
    for i, v in enumerate(ink):
        if all(float(ink_distance(ink[k], v)) >= threshold for k in expected):
            expected.append(i)
    assert _keep_distinct(ink, threshold, chunk=chunk) == expected
    assert 2 <= len(expected) < len(ink) and _keep_distinct([], threshold) == []


def test_near_duplicate_faces_are_dropped(font_dir: Path, tmp_path: Path) -> None:
    clone = tmp_path / "fonts"
    shutil.copytree(font_dir, clone)
    shutil.copy(clone / "DejaVuSans.ttf", clone / "ZZCopyOfDejaVuSans.ttf")
    with_copy = build_glyph_set(clone, OPTIONS)
    without = build_glyph_set(font_dir, OPTIONS)
    assert len(with_copy["images"]) == len(without["images"])
    assert with_copy["meta"]["faces_found"] == without["meta"]["faces_found"] + 1


def test_two_builds_are_identical(font_dir: Path) -> None:
    a, b = build_glyph_set(font_dir, OPTIONS), build_glyph_set(font_dir, OPTIONS)
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert a["ids"] == b["ids"]


def test_cache_is_used_and_a_damaged_cache_is_rebuilt(font_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PLM_CACHE_DIR", str(tmp_path / "cache"))
    first = load_glyphs("test", root=font_dir, options=OPTIONS)
    files = list((tmp_path / "cache").rglob("*.npz"))
    assert len(files) == 1
    import plm.data.glyphs as glyphs

    monkeypatch.setattr(glyphs, "build_glyph_set", lambda *a, **k: pytest.fail("the cache was not used"))
    again = load_glyphs("test", root=font_dir, options=OPTIONS)
    assert again.ids == first.ids
    monkeypatch.undo()
    monkeypatch.setenv("PLM_CACHE_DIR", str(tmp_path / "cache"))
    files[0].write_bytes(b"not a zip file")
    healed = load_glyphs("test", root=font_dir, options=OPTIONS)
    assert healed.ids == first.ids


def test_without_fonts_the_error_names_the_packages(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="fonts-noto-core") as err:
        load_dataset("glyphs", "train", root=tmp_path)
    assert all(p in str(err.value) for p in FONT_PACKAGES[:3])


def test_too_few_faces_is_a_clear_error(font_dir: Path, tmp_path: Path) -> None:
    shutil.copy(font_dir / "DejaVuSans.ttf", tmp_path / "DejaVuSans.ttf")
    with pytest.raises(DatasetNotFoundError, match="distinct faces"):
        build_glyph_set(tmp_path, OPTIONS)
