"""Tiny datasets in the official layouts of CUB-200-2011, Cars-196 and Stanford Online Products, and
unreadable files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: int = 20) -> None:
    """A small RGB JPEG with a per-seed colour and noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    arr = np.clip(base + rng.integers(-30, 30, size=(size, size + 4, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)


def write_cub(root: Path, per_class: dict[int, int]) -> Path:
    """``root/CUB_200_2011`` with ``per_class[c]`` images of each class id c."""
    folder = root / "CUB_200_2011"
    lines, labels, names = [], [], []
    image_id = 0
    for c, count in sorted(per_class.items()):
        cname = f"{c:03d}.Bird_{c}"
        names.append(f"{c} {cname}")
        for k in range(count):
            image_id += 1
            rel = f"{cname}/Bird_{c}_{k:04d}.jpg"
            write_image(folder / "images" / rel, seed=image_id)
            lines.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "classes.txt").write_text("\n".join(names) + "\n")
    # the official image-level split: every image flagged "test", to prove it is ignored
    (folder / "train_test_split.txt").write_text("\n".join(f"{i} 0" for i in range(1, image_id + 1)) + "\n")
    return folder


def write_cars(root: Path, per_class: dict[int, int], paths: list[str] | None = None) -> Path:
    """``cars_annos.mat`` (the real struct layout) and ``car_ims/`` under ``root``."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    records = []
    n = 0
    for c, count in sorted(per_class.items()):
        for k in range(count):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            write_image(root / rel, seed=1000 + n)
            # the official 'test' flag alternates: it must not influence the split
            records.append((rel, 1, 2, 30, 40, c, k % 2))
    if paths is not None:
        records = [(p, *rest) for p, (_, *rest) in zip(paths, records, strict=True)]
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
             ("class", "O"), ("test", "O")]
    ann = np.zeros((1, len(records)), dtype=dtype)
    for i, (rel, x1, y1, x2, y2, c, t) in enumerate(records):
        ann[0, i] = (np.array([rel]), np.array([[x1]], np.uint8), np.array([[y1]], np.uint8),
                     np.array([[x2]], np.uint8), np.array([[y2]], np.uint8), np.array([[c]], np.uint8),
                     np.array([[t]], np.uint8))
    class_names = np.empty((1, 196), dtype=object)
    for c in range(196):
        class_names[0, c] = np.array([f"Car model {c + 1}"])
    savemat(root / "cars_annos.mat", {"annotations": ann, "class_names": class_names})
    return root


def write_sop(root: Path, train: dict[int, int], test: dict[int, int]) -> Path:
    """``root/Stanford_Online_Products`` with Ebay_train.txt / Ebay_test.txt."""
    folder = root / "Stanford_Online_Products"
    image_id = 0
    for fname, per_class in (("Ebay_train.txt", train), ("Ebay_test.txt", test)):
        lines = ["image_id class_id super_class_id path"]
        for c, count in sorted(per_class.items()):
            sup = 1 + c % 2
            for k in range(count):
                image_id += 1
                rel = f"{'bicycle' if sup == 1 else 'chair'}_final/{c}_{k}.JPG"
                write_image(folder / rel, seed=5000 + image_id)
                lines.append(f"{image_id} {c} {sup} {rel}")
        (folder / fname).write_text("\n".join(lines) + "\n")
    return folder


def break_files(folder: Path, rels: list[str]) -> None:
    """Zero-byte, truncated JPEG, text posing as an image, and a missing file."""
    zero, truncated, text, missing = (folder / r for r in rels)
    zero.write_bytes(b"")
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text.write_text("this is not an image")
    missing.unlink()
