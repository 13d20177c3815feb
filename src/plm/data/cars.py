"""Cars-196 (Stanford Cars) in its official layout; zero-shot split classes 1-98 / 99-196.

Layout (``--data-root`` is the folder holding both)::

    cars_annos.mat   struct array ``annotations``: relative_im_path ("car_ims/000001.jpg"),
                     bbox_x1, bbox_y1, bbox_x2, bbox_y2, class (1-196), test (0/1);
                     optional ``class_names``
    car_ims/000001.jpg …

The official image-level ``test`` flag is deliberately not used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from plm.data.base import DatasetNotFoundError, FileImageDataset, class_split
from plm.data.layout import check_folders, check_split_not_empty, find_root

NUM_SEEN = 98  # classes 1-98 are seen (training), 99-196 unseen (test)
LAYOUT = """    <root>/
        cars_annos.mat   (struct array 'annotations' with relative_im_path, bbox_x1, bbox_y1,
                          bbox_x2, bbox_y2, class 1-196, test)
        car_ims/000001.jpg …
    Get car_ims.tgz and cars_annos.mat from the Stanford Cars dataset page
    (https://ai.stanford.edu/~jkrause/cars/car_dataset.html, or a mirror of it)."""


def _strings(values) -> list[str]:
    return [str(np.asarray(v).reshape(-1)[0]) if np.asarray(v).size else "" for v in np.atleast_1d(values)]


def read_annotations(path: Path) -> tuple[list[str], list[int], dict[int, str] | None]:
    """(relative paths, class ids, class names or None) from ``cars_annos.mat``.

    Raises:
        DatasetNotFoundError: the file is missing.
        ValueError: unreadable, or without the ``annotations`` fields plm needs.
    """
    if not path.is_file():
        raise DatasetNotFoundError(f"missing {path}. Expected layout:\n{LAYOUT}")
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), squeeze_me=True)
    except Exception as err:
        raise ValueError(f"cannot read {path} as a MATLAB v5 file: {err}") from err
    ann = mat.get("annotations")
    fields = getattr(getattr(ann, "dtype", None), "names", None) or ()
    if ann is None or "relative_im_path" not in fields or "class" not in fields:
        raise ValueError(f"{path} has no struct array 'annotations' with fields relative_im_path and class "
                         f"(found {sorted(k for k in mat if not k.startswith('__'))}, fields {list(fields)})")
    ann = np.atleast_1d(ann)
    paths = _strings(ann["relative_im_path"])
    try:
        labels = [int(np.asarray(c).reshape(-1)[0]) for c in ann["class"]]
    except (ValueError, IndexError, TypeError) as err:
        raise ValueError(f"{path}: annotations.class must hold one integer per image ({err})") from err
    names = None
    if "class_names" in mat:
        names = {i + 1: n for i, n in enumerate(_strings(mat["class_names"]))}
    return paths, labels, names


def load_cars196(root: str | os.PathLike, split: str = "train", val_classes: int = 0) -> FileImageDataset:
    """Cars-196 zero-shot split; labels are the official class ids (1-196).

    Args:
        root: the folder holding ``cars_annos.mat`` and ``car_ims/``.
        split: ``train`` (1-98 minus val), ``val`` (the last ``val_classes`` of 1-98),
            ``test`` (99-196) or ``all``.
        val_classes: seen classes held out as ``val``.

    Raises:
        DatasetNotFoundError: the folder or ``cars_annos.mat`` is missing.
        UnsafePathError: an annotation path leaves the root.
        ValueError: a malformed annotation file, or an empty split.
    """
    folder = find_root(root, "cars_annos.mat", "cars196", LAYOUT)
    paths, labels, names = read_annotations(folder / "cars_annos.mat")
    classes = sorted(set(labels))
    n_seen = sum(1 for c in classes if c <= NUM_SEEN)
    keep = set(class_split(classes, split, n_train=n_seen, val_classes=val_classes))
    chosen = [(p, y) for p, y in zip(paths, labels, strict=True) if y in keep]
    check_split_not_empty(len(chosen), "cars196", split, folder, classes)
    check_folders(folder, [p for p, _ in chosen], LAYOUT)
    return FileImageDataset(folder, [p for p, _ in chosen], [y for _, y in chosen], "cars196", split,
                            class_names=names)
