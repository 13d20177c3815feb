"""Datasets: CUB-200-2011, Cars-196, Stanford Online Products, Fashion-MNIST, glyphs, digits, image folders.

``load_dataset(name, split, root=...)`` is the one entry point; see :data:`DATASETS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Optional

from plm.data.base import (
    ArrayImageDataset,
    DatasetNotFoundError,
    FileImageDataset,
    ImageDataset,
    ImageLoadError,
    SubsetDataset,
    UnsafePathError,
    class_split,
    collate_skip,
    open_image,
    safe_join,
)


def _fashion(split: str, root, val_classes: int) -> ImageDataset:
    from plm.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(split, root=root, val_classes=val_classes)


def _glyphs(split: str, root, val_classes: int) -> ImageDataset:
    from plm.data.glyphs import load_glyphs

    return load_glyphs(split, root=root, val_classes=val_classes)


def _digits(split: str, root, val_classes: int) -> ImageDataset:
    from plm.data.digits import load_digits_dataset

    return load_digits_dataset(split, val_classes=val_classes)


def _folder(split: str, root, val_classes: int) -> ImageDataset:
    from plm.data.folder import load_image_folder

    if root is None:
        raise ValueError("the folder dataset needs --data-root FOLDER")
    return load_image_folder(root, split=split, val_classes=val_classes)


def _official(module: str, func: str) -> Callable[..., ImageDataset]:
    def load(split: str, root, val_classes: int) -> ImageDataset:
        import importlib

        if root is None:
            raise ValueError("this dataset needs --data-root DIR (see README: supported datasets)")
        return getattr(importlib.import_module(module), func)(root, split=split, val_classes=val_classes)

    return load


DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "cub200": _official("plm.data.cub", "load_cub200"),
    "cars196": _official("plm.data.cars", "load_cars196"),
    "sop": _official("plm.data.sop", "load_sop"),
    "fashion-mnist": _fashion,
    "glyphs": _glyphs,
    "digits": _digits,
    "folder": _folder,
}


def load_dataset(name: str, split: str = "train", root: Optional[str | os.PathLike] = None,
                 val_classes: int = 0) -> ImageDataset:
    """Load a dataset split by name.

    Args:
        name: one of ``cub200``, ``cars196``, ``sop``, ``fashion-mnist``, ``glyphs``, ``digits``, ``folder``.
        split: ``train`` (seen classes), ``val`` (held-out seen classes), ``test`` (unseen
            classes) or ``all``.
        root: dataset root; required for cub200, cars196, sop and folder (for glyphs: an optional
            folder of font files instead of the system's fonts).
        val_classes: how many seen classes form the class-disjoint ``val`` split.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](split, root, val_classes)


__all__ = [
    "ArrayImageDataset", "DATASETS", "DatasetNotFoundError", "FileImageDataset", "ImageDataset",
    "ImageLoadError", "SubsetDataset", "UnsafePathError", "class_split", "collate_skip",
    "load_dataset", "open_image", "safe_join",
]
