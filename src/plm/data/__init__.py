"""Datasets: CUB-200-2011, Cars-196, Stanford Online Products, Fashion-MNIST, glyphs, digits, image folders.

``load_dataset(name, split, root=...)`` is the one entry point; see :data:`DATASETS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

from plm.utils.lazy import lazy_exports
from plm.utils.registry import Registry

if TYPE_CHECKING:  # imported on first use (torch, PIL): ``plm --help`` reads the dataset names only
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

lazy_exports(__name__, {name: "plm.data.base" for name in (
    "ArrayImageDataset", "DatasetNotFoundError", "FileImageDataset", "ImageDataset", "ImageLoadError",
    "SubsetDataset", "UnsafePathError", "class_split", "collate_skip", "open_image", "safe_join")})


#: dataset name → loader ``(split, root, val_classes) -> ImageDataset`` (the CLI's ``--dataset`` choices)
DATASETS: Registry[Callable[..., ImageDataset]] = Registry("dataset")


def _official(module: str, func: str) -> Callable[..., ImageDataset]:
    def load(split: str, root, val_classes: int) -> ImageDataset:
        from plm.utils.lazy import import_target

        if root is None:
            raise ValueError("this dataset needs --data-root DIR (see README: supported datasets)")
        return import_target(f"{module}:{func}")(root, split=split, val_classes=val_classes)

    return load


for _name, _module, _func in (("cub200", "plm.data.cub", "load_cub200"), ("cars196", "plm.data.cars", "load_cars196"),
                              ("sop", "plm.data.sop", "load_sop")):
    DATASETS.add(_name, _official(_module, _func))


@DATASETS.register("fashion-mnist")
def _fashion(split: str, root, val_classes: int) -> ImageDataset:
    from plm.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(split, root=root, val_classes=val_classes)


@DATASETS.register("glyphs")
def _glyphs(split: str, root, val_classes: int) -> ImageDataset:
    from plm.data.glyphs import load_glyphs

    return load_glyphs(split, root=root, val_classes=val_classes)


@DATASETS.register("sprites")
def _sprites(split: str, root, val_classes: int) -> ImageDataset:
    from plm.data.sprites import load_sprites

    return load_sprites(split, root=root, val_classes=val_classes)


@DATASETS.register("digits")
def _digits(split: str, root, val_classes: int) -> ImageDataset:
    from plm.data.digits import load_digits_dataset

    return load_digits_dataset(split, val_classes=val_classes)


@DATASETS.register("folder")
def _folder(split: str, root, val_classes: int) -> ImageDataset:
    from plm.data.folder import load_image_folder

    if root is None:
        raise ValueError("the folder dataset needs --data-root FOLDER")
    return load_image_folder(root, split=split, val_classes=val_classes)


def load_dataset(name: str, split: str = "train", root: Optional[str | os.PathLike] = None,
                 val_classes: int = 0) -> ImageDataset:
    """Load a dataset split by name.

    Args:
        name: one of ``cub200``, ``cars196``, ``sop``, ``fashion-mnist``, ``glyphs``, ``sprites``, ``digits``,
            ``folder``.
        split: ``train`` (seen classes), ``val`` (held-out seen classes), ``test`` (unseen
            classes) or ``all``.
        root: dataset root; required for cub200, cars196, sop and folder (for glyphs: an optional
            folder of font files instead of the system's fonts; for sprites: the game's ``data/core``).
        val_classes: how many seen classes form the class-disjoint ``val`` split.
    """
    return DATASETS.get(name)(split, root, val_classes)


__all__ = [
    "ArrayImageDataset", "DATASETS", "DatasetNotFoundError", "FileImageDataset", "ImageDataset",
    "ImageLoadError", "SubsetDataset", "UnsafePathError", "class_split", "collate_skip",
    "load_dataset", "open_image", "safe_join",
]
