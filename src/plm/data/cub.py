"""CUB-200-2011 in its official layout; zero-shot split classes 1-100 (seen) / 101-200 (unseen).

Layout (``--data-root`` is ``CUB_200_2011/`` or the folder holding it)::

    CUB_200_2011/
        images.txt               "<image id> <path under images/>"
        image_class_labels.txt   "<image id> <class id 1-200>"
        classes.txt              "<class id> <NNN.Name>"   (optional: class names)
        images/<NNN.Name>/<file>.jpg

``train_test_split.txt`` (the official image-level split) is deliberately not used.
"""

from __future__ import annotations

import os

from plm.data.base import FileImageDataset, class_split
from plm.data.layout import check_folders, check_split_not_empty, find_root, read_rows, to_int

NUM_SEEN = 100  # classes 1-100 are seen (training), 101-200 unseen (test)
LAYOUT = """    CUB_200_2011/
        images.txt               "<image id> <path under images/>"
        image_class_labels.txt   "<image id> <class id 1-200>"
        classes.txt              "<class id> <NNN.Name>"  (optional)
        images/<NNN.Name>/<file>.jpg
    Get it from https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz)."""


def load_cub200(root: str | os.PathLike, split: str = "train", val_classes: int = 0) -> FileImageDataset:
    """CUB-200-2011 zero-shot split; labels are the official class ids (1-200).

    Args:
        root: ``CUB_200_2011/`` or its parent folder.
        split: ``train`` (classes 1-100 minus val), ``val`` (the last ``val_classes`` of 1-100),
            ``test`` (101-200) or ``all``.
        val_classes: seen classes held out as ``val``.

    Raises:
        DatasetNotFoundError: the folder or an index file is missing.
        UnsafePathError: an index entry leaves the ``images/`` folder.
        ValueError: a malformed index file, or an empty split.
    """
    folder = find_root(root, "images.txt", "CUB_200_2011", LAYOUT)
    images = read_rows(folder / "images.txt", 2, LAYOUT)
    labels_file = folder / "image_class_labels.txt"
    label_of = {}
    for image_id, class_id in read_rows(labels_file, 2, LAYOUT):
        label_of[image_id] = to_int(class_id, labels_file, "class id")
    missing = [i for i, _ in images if i not in label_of]
    if missing:
        raise ValueError(f"{labels_file}: no class for image id(s) {', '.join(missing[:5])}"
                         f"{' …' if len(missing) > 5 else ''}")
    class_names = None
    if (folder / "classes.txt").is_file():
        class_names = {to_int(c, folder / "classes.txt", "class id"): name.split(".", 1)[-1]
                       for c, name in read_rows(folder / "classes.txt", 2, LAYOUT)}
    classes = sorted({label_of[i] for i, _ in images})
    n_seen = sum(1 for c in classes if c <= NUM_SEEN)
    keep = set(class_split(classes, split, n_train=n_seen, val_classes=val_classes))
    chosen = [(path, label_of[i]) for i, path in images if label_of[i] in keep]
    check_split_not_empty(len(chosen), "cub200", split, folder, classes)
    check_folders(folder / "images", [p for p, _ in chosen], LAYOUT)
    return FileImageDataset(folder / "images", [p for p, _ in chosen], [y for _, y in chosen], "cub200", split,
                            class_names=class_names)
