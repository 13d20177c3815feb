"""The near-duplicate threshold of ``plm duplicates``: how far a re-saved copy lies from its original,
and how near distinct images come, with the embeddings ``plm embed`` makes by default.

    python -m benchmarks.bench_duplicates               # 300 Fashion-MNIST images + 60 photo crops, ~3 min
    python -m benchmarks.bench_duplicates --n 100       # a quicker look

For each original, four copies a collection typically holds: JPEG re-encoded at quality 60, resized
to half its size, cropped by 4% on each side, made 10% brighter. Everything is embedded with
EfficientNet-Lite0 at its own 224 px (``plm embed``'s default model) and compared by ``1 - cosine
similarity``, the distance ``plm search`` and ``plm duplicates`` report. Printed: per kind of copy,
the largest and 99th-percentile distance to its original; for the originals, the smallest and the
1st / 5th / 50th percentile distance to the nearest *other* original (distinct images that look
alike: Fashion-MNIST's shirts, crops of one photo). The default threshold must lie between the two.
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
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=60)
    m = max(1, int(round(0.04 * min(w, h))))
    return {"jpeg q60": Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
            "half size": img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BILINEAR),
            "crop 4%": img.crop((m, m, w - m, h - m)),
            "brighter 10%": ImageEnhance.Brightness(img).enhance(1.1)}


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
    crops = []
    for photo in load_sample_images().images:
        ph = Image.fromarray(photo)
        for _ in range(max(1, n // 10)):
            x, y = (int(v) for v in rng.integers(0, (ph.width - 160, ph.height - 160)))
            crops.append(ph.crop((x, y, x + 160, y + 160)))
    out["photo crops"] = crops
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="Fashion-MNIST originals (photo crops: n/10 per photo)")
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
        print(f"{name}: {len(originals)} originals × 5 embedded in {time.perf_counter() - start:.0f} s")
        owner_a, kinds_a = np.array(owner), np.array(kinds)
        orig = emb[kinds_a == "original"]
        d_copy = {}
        for kind in sorted(set(kinds) - {"original"}):
            rows = np.flatnonzero(kinds_a == kind)
            d = 1.0 - np.sum(emb[rows] * orig[owner_a[rows]], axis=1)
            d_copy[kind] = {"max": float(d.max()), "p99": float(np.quantile(d, 0.99))}
        sim = torch.from_numpy(orig) @ torch.from_numpy(orig).T
        sim.fill_diagonal_(-2.0)
        nearest = 1.0 - sim.max(dim=1).values.numpy()
        d_other = {"min": float(nearest.min()), "p1": float(np.quantile(nearest, 0.01)),
                   "p5": float(np.quantile(nearest, 0.05)), "p50": float(np.quantile(nearest, 0.5))}
        report[name] = {"copies": d_copy, "nearest_other_original": d_other}
        for kind, v in d_copy.items():
            print(f"  copy {kind:<13} to its original: max {v['max']:.4f}, p99 {v['p99']:.4f}")
        print(f"  nearest other original: min {d_other['min']:.4f}, p1 {d_other['p1']:.4f}, "
              f"p5 {d_other['p5']:.4f}, median {d_other['p50']:.4f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
