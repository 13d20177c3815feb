"""scikit-learn's ``load_digits`` (1,797 8×8 images, always available): classes 0-4 / 5-9."""

from __future__ import annotations

import numpy as np

from plm.data.base import ArrayImageDataset, class_split


def load_digits_dataset(split: str = "train", val_classes: int = 0) -> ArrayImageDataset:
    """The digits zero-shot split; pixels rescaled from 0-16 to 0-255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    keep = np.isin(labels, class_split(range(10), split, n_train=5, val_classes=val_classes))
    idx = np.flatnonzero(keep)
    return ArrayImageDataset(images[idx], labels[idx], [f"digits:{i}" for i in idx], "digits", split)
