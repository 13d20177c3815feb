"""The three datasets of a run: train (seen classes), validation (held-out seen classes), test.

Model selection uses a class-disjoint validation split carved from the *seen* classes
(``load_dataset(..., val_classes=n)`` takes the last n); the test (unseen) classes are touched only
once, at the end, by the selected checkpoint. Training never reads a label.

Automatic validation size (``data.val_classes: null``): with C seen classes, ``max(2,
round(0.2·C))`` classes, and none when C < 4 (two classes are the fewest for which MAP@R means
anything, and fewer than two left for training would be pointless). Fashion-MNIST and digits
(5 seen classes) thus train on 3 classes and validate on 2; CUB on 80 / 20, Cars on 78 / 20. With
no validation split (``data.val_classes: 0``, or an unlabelled folder) the best epoch is the one
with the lowest mean training loss.

With ``data.split: images`` every class is trained on instead, and a seeded share of each class's
images (``data.holdout``) is held out, half for validation and half for test
(:func:`image_holdout`): the protocol for a better embedding of one collection.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from plm.data import ImageDataset, UnsafePathError, load_dataset
from plm.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class Splits:
    """Datasets of a run; ``val``/``test`` are ``None`` where they do not exist."""

    train: ImageDataset
    val: Optional[ImageDataset]
    test: Optional[ImageDataset]
    val_classes: int


def auto_val_classes(num_seen: int) -> int:
    """Default number of validation classes for ``num_seen`` seen classes (see module docs)."""
    return 0 if num_seen < 4 else max(2, int(round(0.2 * num_seen)))


def load_splits(config: TrainConfig) -> Splits:
    """Load train / val / test for a :class:`~plm.training.config.TrainConfig`.

    Raises:
        ValueError: an explicit ``data.val_classes`` leaves fewer than one training class, or is
            given for an unlabelled dataset.
    """
    name, root = config.dataset, config.data_root
    if config.data.split == "images":
        return _image_splits(config)
    seen = load_dataset(name, "train", root=root, val_classes=0)
    labelled = seen.is_labelled and seen.num_classes > 0
    n_val = config.data.val_classes
    if not labelled:
        if n_val:
            raise ValueError(f"data.val_classes={n_val} needs a labelled dataset; {name} at {root} has no labels")
        log.info("unlabelled training data: no validation metric, model selection on the training loss")
        train = seen
        val = test = None
        n_val = 0
    else:
        if n_val is None:
            n_val = auto_val_classes(seen.num_classes)
        if n_val >= seen.num_classes:
            raise ValueError(f"data.val_classes={n_val} leaves no training class "
                             f"(there are {seen.num_classes} seen classes)")
        if n_val == 1:
            raise ValueError("data.val_classes=1: MAP@R on a single class is always 1; use 0 (select on training "
                             "loss) or at least 2")
        train = load_dataset(name, "train", root=root, val_classes=n_val) if n_val else seen
        val = load_dataset(name, "val", root=root, val_classes=n_val).limit(config.eval.val_limit) if n_val else None
        test = _load_test(name, root)
        if test is not None:
            test = test.limit(config.eval.test_limit)
    train = train.limit(config.data.limit, seed=config.seed)
    return Splits(train, val, test, n_val)


#: the seed of the image hold-out: the same split for every training seed, so runs compare
HOLDOUT_SEED = 0


def image_holdout(labels: np.ndarray, holdout: float, seed: int = HOLDOUT_SEED) -> tuple[np.ndarray, ...]:
    """(train, val, test) positions: per class, a seeded ``floor(holdout · n)`` of its n images is
    held out (none when n < 4), the first ``ceil`` half for validation and the rest for test.

    Unlabelled items (label ``-1``) are all training items.
    """
    train, val, test = [], [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_hold = int(math.floor(holdout * len(idx) + 1e-9)) if c >= 0 and len(idx) >= 4 else 0
        order = np.random.default_rng([seed, int(c) + 1]).permutation(idx)
        n_val = (n_hold + 1) // 2
        val.append(order[:n_val])
        test.append(order[n_val:n_hold])
        train.append(order[n_hold:])
    return tuple(np.sort(np.concatenate(x)) if x else np.zeros(0, np.int64) for x in (train, val, test))


def _image_splits(config: TrainConfig) -> Splits:
    """``data.split: images``: every class trained on, a share of each class's images held out."""
    full = load_dataset(config.dataset, "all", root=config.data_root)
    if not (full.is_labelled and full.num_classes > 1):
        raise ValueError(f"data.split=images holds out images of each class, so it needs a labelled dataset with at "
                         f"least 2 classes; {config.dataset} at {config.data_root} has "
                         f"{'no labels' if not full.is_labelled else 'one class'} (use data.split=classes)")
    train_idx, val_idx, test_idx = image_holdout(full.labels, config.data.holdout)
    val = full.subset(val_idx).limit(config.eval.val_limit) if len(val_idx) else None
    test = full.subset(test_idx).limit(config.eval.test_limit) if len(test_idx) else None
    n_val = int(np.unique(full.labels[val_idx]).size) if len(val_idx) else 0
    log.info("data.split=images: %d classes, %d training, %d validation and %d test images", full.num_classes,
             len(train_idx), len(val_idx), len(test_idx))
    train = full.subset(train_idx).limit(config.data.limit, seed=config.seed)
    return Splits(train, val, test, n_val)


def _load_test(name: str, root: Optional[str]) -> Optional[ImageDataset]:
    try:
        test = load_dataset(name, "test", root=root)
    except UnsafePathError:  # one rule for every command: an entry leaving the root refuses the dataset
        raise
    except ValueError as err:
        log.info("no test split: %s", err)
        return None
    if len(test) == 0 or not test.is_labelled:
        return None
    return test
