"""scripts/mixed_folder.py: the labelled mixed folder of docs/results.md, built the same way every time."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mixed_folder.py"


@pytest.fixture()
def script(monkeypatch: pytest.MonkeyPatch):
    """The script as a module, its image sources replaced by seeded noise (no fonts or datasets needed)."""
    spec = importlib.util.spec_from_file_location("mixed_folder", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "mixed_folder", module)
    spec.loader.exec_module(module)

    def noise(what: str, count: int, rng: np.random.Generator) -> list[Image.Image]:
        return [Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)) for _ in range(count)]

    monkeypatch.setattr(module, "SOURCES", {k: noise for k in module.SOURCES})
    return module


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_builds_thirteen_classes_deterministically_and_replaces_the_folder(script, tmp_path: Path) -> None:
    from plm.data.folder import load_image_folder

    out = tmp_path / "mixed"
    counts = script.build(out, per_class=3, seed=0)
    assert list(counts) == sorted(script.CLASSES) and set(counts.values()) == {3}
    first = _tree(out)
    assert len(first) == 39 and not (tmp_path / "mixed.partial").exists()
    with Image.open(out / "00-glyph-A" / "000.png") as im:
        assert im.size == (script.SIZE, script.SIZE) and im.mode == "RGB"
    (out / "stray.txt").write_text("left from before")
    script.build(out, per_class=3, seed=0)
    assert _tree(out) == first  # the same bytes, the stray file gone
    script.build(out, per_class=3, seed=1)
    assert _tree(out) != first
    # the zero-shot split of a labelled folder: 6 seen classes (the last 2 for validation), 7 unseen
    train = load_image_folder(out, "train", val_classes=2)
    val = load_image_folder(out, "val", val_classes=2)
    test = load_image_folder(out, "test", val_classes=2)
    assert (len(train), len(val), len(test)) == (12, 6, 21)
    assert {Path(i).parts[0] for i in val.ids} == {"04-fashion-pullover", "05-fashion-coat"}
