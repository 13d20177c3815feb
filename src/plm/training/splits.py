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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from plm.data import ImageDataset, UnsafePathError, load_dataset

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


def load_splits(config) -> Splits:
    """Load train / val / test for a :class:`~plm.training.config.TrainConfig`.

    Raises:
        ValueError: an explicit ``data.val_classes`` leaves fewer than one training class, or is
            given for an unlabelled dataset.
    """
    name, root = config.dataset, config.data_root
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


def _load_test(name: str, root) -> Optional[ImageDataset]:
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
