"""A plain image folder: recursive; labels from first-level sub-folders when present.

Images directly under the root (or any folder without sub-folders of images) are unlabelled
(label ``-1``). With class sub-folders, sub-folder names sorted alphabetically become labels
0, 1, …; the zero-shot split then uses the first half of the classes as seen, the rest unseen.
Hidden files and folders are ignored; symbolic links that leave the root are refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from plm.data.base import IMAGE_EXTENSIONS, DatasetNotFoundError, FileImageDataset, class_split
from plm.data.layout import check_split_not_empty

log = logging.getLogger(__name__)


def list_images(root: str | os.PathLike) -> list[str]:
    """Relative paths (POSIX style, sorted) of every file under ``root`` with an image extension.

    A sub-folder that cannot be read (no permission) is skipped with a warning naming it.
    """
    root = Path(root)
    found = []

    def unreadable(err: OSError) -> None:
        log.warning("skipped the folder %s: it cannot be read (%s)", err.filename, err.strerror or err)

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(found)


def load_image_folder(root: str | os.PathLike, split: str = "all", val_classes: int = 0,
                      train_fraction: float = 0.5) -> FileImageDataset:
    """Every image under ``root``; ``split`` applies only when there are class sub-folders.

    Args:
        root: the folder.
        split: ``all`` (default), or ``train``/``val``/``test`` for a labelled folder.
        val_classes: seen classes held out for validation.
        train_fraction: share of the (sorted) classes that are seen.

    Raises:
        DatasetNotFoundError: ``root`` is missing or holds no images.
        UnsafePathError: a symbolic link leads out of ``root``.
        ValueError: a split that is empty or undefined for this folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder not found: {root} (expected a folder of images, "
                                   f"optionally in one sub-folder per class: ROOT/<class>/<image>.jpg)")
    rel = list_images(root)
    if not rel:
        raise DatasetNotFoundError(f"no images under {root} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    top = [r.split("/", 1)[0] for r in rel if "/" in r]  # the class sub-folder of each image, when all have one
    labelled = len(top) == len(rel)
    if not labelled:
        if split not in ("all", "train"):
            raise ValueError(f"{root} has no class sub-folders, so it has no {split!r} split: use --split all "
                             f"(the whole folder), or put each class in its own sub-folder")
        return FileImageDataset(root, rel, [-1] * len(rel), "folder", split)
    names = sorted(set(top))
    label_of = {n: i for i, n in enumerate(names)}
    labels = [label_of[t] for t in top]
    n_train = max(1, int(round(len(names) * train_fraction))) if split != "all" else len(names)
    keep = set(class_split(range(len(names)), split, n_train=n_train, val_classes=val_classes))
    sel = [i for i, y in enumerate(labels) if y in keep]
    check_split_not_empty(len(sel), "folder", split, root, names)
    return FileImageDataset(root, [rel[i] for i in sel], [labels[i] for i in sel], "folder", split,
                            class_names={i: n for i, n in enumerate(names)})
