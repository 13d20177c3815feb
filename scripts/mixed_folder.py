#!/usr/bin/env python3
"""A labelled folder of 13 classes of four kinds, to check what the defaults do on a user's mixed collection.

    python scripts/mixed_folder.py runs/mixed                  # 13 class folders, 32 PNG images each
    plm train --dataset folder --data-root runs/mixed --epochs 3 --out runs/mixed-run

Every image comes from data installed offline (``scripts/install.sh``): glyphs rendered from the
system's fonts (Latin letters and Greek/Cyrillic ones), Fashion-MNIST, Wesnoth terrain tiles
(textures) and random crops of scikit-learn's two sample photos. The class folders are named so that
the sorted order interleaves the kinds: ``plm train --dataset folder`` sees the first 6 (the last 2
of them held out for validation) and tests on the other 7, so each split has several kinds.
Deterministic for a given ``--seed``; the folder is written to a temporary name, then renamed.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 96  # pixels per side of every image written

#: sorted class folder name -> (source, what); the first 6 are seen (04 and 05 validation), the rest unseen
CLASSES: dict[str, tuple[str, str]] = {
    "00-glyph-A": ("glyph", "A"),
    "01-fashion-trouser": ("fashion", "1"),
    "02-texture-grass": ("terrain", "grass"),
    "03-photo-temple": ("photo", "china.jpg"),
    "04-fashion-pullover": ("fashion", "2"),  # validation: two look-alike garments
    "05-fashion-coat": ("fashion", "4"),
    "06-fashion-sandal": ("fashion", "5"),
    "07-fashion-sneaker": ("fashion", "7"),
    "08-glyph-Zhe": ("glyph", "Ж"),
    "09-glyph-lambda": ("glyph", "λ"),
    "10-photo-flower": ("photo", "flower.jpg"),
    "11-texture-sand": ("terrain", "sand"),
    "12-texture-water": ("terrain", "water"),
}
TERRAIN = Path("/usr/share/games/wesnoth/1.16/data/core/images/terrain")
_DIRECTIONS = ("-n.", "-ne.", "-nw.", "-s.", "-se.", "-sw.", "-e.", "-w.")


@functools.cache
def _glyph_split(split: str):
    from plm.data.glyphs import load_glyphs

    return load_glyphs(split)


@functools.cache
def _fashion_all():
    from plm.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist("all", download=False)


def _glyphs(char: str, count: int, rng: np.random.Generator) -> list[Image.Image]:
    data = _glyph_split("train" if char.isascii() else "test")  # loaded once for every glyph class
    label = next((k for k, v in (data.class_names or {}).items() if v == char), None)
    if label is None:
        raise SystemExit(f"the glyph benchmark has no class {char!r}")
    rows = np.flatnonzero(data.labels == label)
    pick = rng.choice(rows, size=min(count, len(rows)), replace=False)
    return [data.load_image(int(i)) for i in pick]


def _fashion(label: str, count: int, rng: np.random.Generator) -> list[Image.Image]:
    data = _fashion_all()
    rows = np.flatnonzero(data.labels == int(label))
    return [data.load_image(int(i)) for i in rng.choice(rows, size=count, replace=False)]


def _terrain(name: str, count: int, rng: np.random.Generator) -> list[Image.Image]:
    folder = TERRAIN / name
    if not folder.is_dir():
        raise SystemExit(f"{folder} is missing: install Debian's wesnoth-1.16-data (scripts/install.sh does)")
    files = sorted(p for p in folder.rglob("*.png") if not any(s in p.name for s in _DIRECTIONS))
    pick = rng.choice(len(files), size=min(count, len(files)), replace=False)
    images = []
    for i in pick:
        with Image.open(files[int(i)]) as im:
            rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent corners of the hex: white
        images.append(Image.alpha_composite(canvas, rgba).convert("RGB"))
    return images


def _photo(name: str, count: int, rng: np.random.Generator) -> list[Image.Image]:
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image(name))
    w, h = photo.size
    images = []
    for _ in range(count):
        side = int(rng.integers(min(w, h) // 4, min(w, h) // 2))
        x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        images.append(photo.crop((x, y, x + side, y + side)))
    return images


SOURCES = {"glyph": _glyphs, "fashion": _fashion, "terrain": _terrain, "photo": _photo}


def build(out: Path, per_class: int = 32, seed: int = 0) -> dict[str, int]:
    """Write the 13 class folders under ``out`` (replaced if present); returns images per class."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {}
    for c, (name, (source, what)) in enumerate(CLASSES.items()):
        rng = np.random.default_rng([seed, c])
        folder = tmp / name
        folder.mkdir(parents=True)
        images = SOURCES[source](what, per_class, rng)
        for i, image in enumerate(images):
            image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC).save(folder / f"{i:03d}.png")
        counts[name] = len(images)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="the folder to write (replaced if present)")
    parser.add_argument("--per-class", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = build(args.out, args.per_class, args.seed)
    print(f"{args.out}: {sum(counts.values())} images in {len(counts)} classes "
          f"({', '.join(f'{k} {v}' for k, v in counts.items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
