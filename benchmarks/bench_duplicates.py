"""The near-duplicate threshold of ``plm duplicates``: how far a re-saved copy lies from its original,
and how near distinct images come, with the embeddings ``plm embed`` makes by default.

    python -m benchmarks.bench_duplicates               # 150 Fashion-MNIST images + 24 photo tiles, ~3 min
    python -m benchmarks.bench_duplicates --n 60        # a quicker look

For each original, the copies a collection typically holds: JPEG re-encoded at quality 85 and 60,
resized to 75% and 50% of its size, cropped by 4% on each side, made 10% brighter. Everything is
embedded with EfficientNet-Lite0 at its own 224 px (``plm embed``'s default model) and compared by
``1 - cosine similarity``, the distance ``plm search`` and ``plm duplicates`` report. Originals:
Fashion-MNIST test images (28 px: every copy is upscaled, the hard case), non-overlapping 160 px
tiles of scikit-learn's two sample photos (neighbouring tiles of one photo look alike), and those
photos at their own size (640 × 427, with two square crops each: copies only, as they overlap).
Printed: per kind of copy, the median, 90th percentile and largest distance to its original; for the
originals of the first two sets, the smallest, 1st / 5th percentile and median distance to the nearest
*other* original.
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
from PIL import Image, ImageEnhance


def _copies(img: Image.Image) -> dict[str, Image.Image]:
    w, h = img.size
    m = max(1, int(round(0.04 * min(w, h))))
    out = {}
    for q in (85, 60):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q)
        out[f"jpeg q{q}"] = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    for share in (75, 50):
        out[f"{share}% size"] = img.resize((max(1, w * share // 100), max(1, h * share // 100)),
                                           Image.Resampling.LANCZOS)
    out["crop 4%"] = img.crop((m, m, w - m, h - m))
    out["brighter 10%"] = ImageEnhance.Brightness(img).enhance(1.1)
    return out


def _originals(n: int, seed: int) -> dict[str, list[Image.Image]]:
    from sklearn.datasets import load_sample_images

    from plm.data import load_dataset

    rng = np.random.default_rng(seed)
    out: dict[str, list[Image.Image]] = {}
    try:
        fm = load_dataset("fashion-mnist", "test")
        out["fashion-mnist"] = [fm.load_image(int(i)) for i in rng.choice(len(fm), size=n, replace=False)]
    except (FileNotFoundError, ValueError) as err:
        print(f"fashion-mnist skipped: {err}")
    tiles = []
    for photo in load_sample_images().images:
        ph = Image.fromarray(photo)
        tiles += [ph.crop((x, y, x + 160, y + 160)) for y in range(0, ph.height - 159, 160)
                  for x in range(0, ph.width - 159, 160)]
    out["photo tiles"] = tiles
    out["photos, full size"] = [Image.fromarray(a).crop(box) for a in load_sample_images().images
                                for box in ((0, 0, 640, 427), (0, 0, 427, 427), (213, 0, 640, 427))]
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150, help="Fashion-MNIST originals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)

    import torch

    from plm.data import ArrayImageDataset
    from plm.evaluation import embed_dataset
    from plm.models import build_embedder

    model = build_embedder("efficientnet_lite0")
    report = {}
    for name, originals in _originals(args.n, args.seed).items():
        images, owner, kinds = [], [], []
        for i, img in enumerate(originals):
            for kind, copy in {"original": img, **_copies(img)}.items():
                images.append(np.asarray(copy.convert("RGB")))
                owner.append(i)
                kinds.append(kind)
        start = time.perf_counter()
        shapes: dict[tuple, list[int]] = {}  # the copies differ in size: one array dataset per shape
        for j, arr in enumerate(images):
            shapes.setdefault(arr.shape, []).append(j)
        emb = np.zeros((len(images), model.out_dim), np.float32)
        for _shape, rows in shapes.items():
            ds = ArrayImageDataset(np.stack([images[j] for j in rows]), np.zeros(len(rows), np.int64),
                                   [str(j) for j in rows], "dup", "all")
            emb[rows] = embed_dataset(model, ds, cache_dir=False, progress=False).vectors
        print(f"{name}: {len(originals)} originals and their copies embedded in {time.perf_counter() - start:.0f} s")
        owner_a, kinds_a = np.array(owner), np.array(kinds)
        orig = emb[kinds_a == "original"]
        d_copy = {}
        for kind in sorted(set(kinds) - {"original"}):
            rows = np.flatnonzero(kinds_a == kind)
            d = 1.0 - np.sum(emb[rows] * orig[owner_a[rows]], axis=1)
            d_copy[kind] = {"p50": float(np.median(d)), "p90": float(np.quantile(d, 0.9)), "max": float(d.max())}
        report[name] = {"copies": d_copy}
        for kind, v in d_copy.items():
            print(f"  copy {kind:<13} to its original: median {v['p50']:.4f}, p90 {v['p90']:.4f}, max {v['max']:.4f}")
        if name == "photos, full size":  # overlapping crops of two photos: no distinct-image statistic
            continue
        sim = torch.from_numpy(orig) @ torch.from_numpy(orig).T
        sim.fill_diagonal_(-2.0)
        nearest = 1.0 - sim.max(dim=1).values.numpy()
        d_other = {"min": float(nearest.min()), "p1": float(np.quantile(nearest, 0.01)),
                   "p5": float(np.quantile(nearest, 0.05)), "p50": float(np.quantile(nearest, 0.5))}
        report[name]["nearest_other_original"] = d_other
        print(f"  nearest other original: min {d_other['min']:.4f}, p1 {d_other['p1']:.4f}, "
              f"p5 {d_other['p5']:.4f}, median {d_other['p50']:.4f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
