"""Augmented views of a dataset, drawn once and reproducibly, so that their features can be cached.

:class:`AugmentedViews` lists ``views`` copies of every image of a dataset (view-major: item
``v · N + i`` is view ``v`` of image ``i``). Each copy is a random resized crop (scale in
``scale``, aspect ratio in [3/4, 4/3], torchvision's sampling rule) of side ``size``, flipped
horizontally with probability ½, drawn from a generator seeded with (seed, image, view): the same
views on every run and in any order, whatever the global random state, so the features of the
views can be computed once and cached like the features of the images themselves (frozen mode's
``data.views``). The model's test-time preprocessing then takes its centre crop.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from plm.data.base import ImageDataset


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale: tuple[float, float] = (0.16, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop: area share in ``scale``, log-uniform aspect
    ratio in ``ratio``; ten tries, then the largest centre crop within ``ratio`` (torchvision's rule)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


class AugmentedViews(ImageDataset):
    """``views`` seeded augmented copies of every image of ``parent`` (see the module docs).

    Args:
        parent: the dataset.
        views: copies per image (≥ 1).
        size: side of each view (the model's test-time ``resize_size``, so that its centre crop
            keeps the usual share of the view).
        scale: crop area range, as a share of the image.
        seed: the seed of every draw.
    """

    def __init__(self, parent: ImageDataset, views: int, size: int, scale: tuple[float, float] = (0.16, 1.0),
                 seed: int = 0):
        super().__init__()
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.parent, self.views, self.size, self.scale, self.seed = parent, int(views), int(size), scale, int(seed)
        n = len(parent)
        self.name, self.split, self.class_names = parent.name, f"{parent.split}-views{views}", parent.class_names
        self.labels = np.tile(parent.labels, self.views)
        self.ids = [f"{parent.ids[i]}#view{v}" for v in range(self.views) for i in range(n)]

    def load_image(self, index: int) -> Image.Image:
        n = len(self.parent)
        view, item = divmod(int(index), n)
        img = self.parent.load_image(item)
        rng = np.random.default_rng([self.seed, item, view])
        box = random_resized_crop_box(img.width, img.height, rng, self.scale)
        out = img.crop(box).resize((self.size, self.size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return out

    def _content_key(self) -> str:
        return f"{self.parent.fingerprint()}|{self.views}|{self.size}|{self.scale}|{self.seed}"
