"""Stanford Online Products in its official layout; zero-shot split Ebay_train / Ebay_test classes.

Layout (``--data-root`` is ``Stanford_Online_Products/`` or the folder holding it)::

    Stanford_Online_Products/
        Ebay_train.txt   header line (recognised by content), then
                         "image_id class_id super_class_id path" (11,318 classes)
        Ebay_test.txt    same format (11,316 classes, disjoint from the training ones)
        <super>_final/<file>.JPG
"""

from __future__ import annotations

import os

from plm.data.base import FileImageDataset, class_split
from plm.data.layout import check_folders, check_split_not_empty, find_root, read_rows, to_int

LAYOUT = """    Stanford_Online_Products/
        Ebay_train.txt   "image_id class_id super_class_id path" (one header line)
        Ebay_test.txt    same format
        bicycle_final/111085122871_0.JPG …
    Get Stanford_Online_Products.zip from https://cvgl.stanford.edu/projects/lifted_struct/."""


def _read(path) -> list[tuple[str, int]]:
    return [(rel, to_int(cls, path, "class_id"))
            for _, cls, _, rel in read_rows(path, 4, LAYOUT, header=True)]


def load_sop(root: str | os.PathLike, split: str = "train", val_classes: int = 0) -> FileImageDataset:
    """Stanford Online Products zero-shot split; labels are the official class ids.

    Args:
        root: ``Stanford_Online_Products/`` or its parent folder.
        split: ``train`` (Ebay_train classes minus val), ``val`` (the last ``val_classes`` of
            the Ebay_train classes), ``test`` (Ebay_test) or ``all``.
        val_classes: training classes held out as ``val``.

    Raises:
        DatasetNotFoundError: the folder or an index file is missing.
        UnsafePathError: an index entry leaves the root.
        ValueError: malformed index files, train and test sharing classes, or an empty split.
    """
    folder = find_root(root, "Ebay_train.txt", "Stanford_Online_Products", LAYOUT)
    train = _read(folder / "Ebay_train.txt") if split != "test" else []
    test = _read(folder / "Ebay_test.txt") if split in ("test", "all") else []
    if split in ("train", "val"):
        entries = train
        keep = set(class_split({y for _, y in train}, split, n_train=len({y for _, y in train}),
                               val_classes=val_classes))
    else:  # val_classes only shapes train/val; the test classes are Ebay_test's
        entries = test if split == "test" else train + test
        keep = {y for _, y in entries}
        if split == "all":
            shared = {y for _, y in train} & {y for _, y in test}
            if shared:
                raise ValueError(f"{folder}: Ebay_train.txt and Ebay_test.txt share {len(shared)} class id(s), "
                                 f"e.g. {sorted(shared)[:3]}; the official split is class-disjoint")
    chosen = [(p, y) for p, y in entries if y in keep]
    check_split_not_empty(len(chosen), "sop", split, folder)
    check_folders(folder, [p for p, _ in chosen], LAYOUT)
    return FileImageDataset(folder, [p for p, _ in chosen], [y for _, y in chosen], "sop", split)
