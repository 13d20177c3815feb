"""Tiny generated image folders shared by the search, embed, index and browser tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = {"circles": ("ellipse", (220, 40, 40)), "squares": ("rectangle", (40, 170, 60)),
          "triangles": ("polygon", (50, 80, 220))}


def shape_image(kind: str, colour: tuple[int, int, int], rng: np.random.Generator, size: int = 48) -> Image.Image:
    """One shape of ``kind`` in ``colour`` at a random place and size on a light, noisy background."""
    bg = rng.integers(200, 256, size=3)
    arr = np.clip(bg + rng.normal(0, 8, size=(size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    s = int(rng.integers(size // 3, size - 6))
    x, y = (int(v) for v in rng.integers(2, size - s - 1, size=2))
    jitter = tuple(int(c) for c in np.clip(np.array(colour) + rng.integers(-25, 26, size=3), 0, 255))
    if kind == "polygon":
        draw.polygon([(x, y + s), (x + s, y + s), (x + s // 2, y)], fill=jitter)
    else:
        getattr(draw, kind)([x, y, x + s, y + s], fill=jitter)
    return img


def make_shapes_folder(root: Path, per_class: int = 8, seed: int = 0, start: int = 0,
                       classes: tuple[str, ...] = tuple(SHAPES)) -> list[Path]:
    """Write ``per_class`` images into ``root/<class>/`` (JPEG and PNG mixed); returns their paths."""
    rng = np.random.default_rng(seed)
    written = []
    for name in classes:
        kind, colour = SHAPES[name]
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            path = root / name / f"{name[:-1]}_{i:03d}.{'jpg' if i % 2 else 'png'}"
            shape_image(kind, colour, rng).save(path)
            written.append(path)
    return written


def embedded_collection(tmp: Path, per_class: int = 3) -> dict[str, Path]:
    """A shapes folder under ``tmp/imgs``, embedded (EfficientNet-Lite0 at 32 px) and indexed (exact):
    ``{"tmp", "root", "emb", "idx"}``."""
    from plm.cli import main

    root = tmp / "imgs"
    make_shapes_folder(root, per_class=per_class)
    emb, idx = tmp / "emb.npz", tmp / "idx.npz"
    assert main(["embed", str(root), "--backbone", "efficientnet_lite0", "--image-size", "32", "--out", str(emb),
                 "--quiet"]) == 0
    assert main(["index", str(emb), "--out", str(idx), "--quiet"]) == 0
    return {"tmp": tmp, "root": root, "emb": emb, "idx": idx}


def store_like(src: Path, dst: Path, **changes) -> Path:
    """A copy of the embeddings file ``src`` at ``dst`` with some fields replaced (``vectors``, ``paths`` …)."""
    from plm.search import EmbeddingStore

    store = EmbeddingStore.load(src)
    for key, value in changes.items():
        setattr(store, key, value)
    store.save(dst)
    return dst
