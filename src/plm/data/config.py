"""The ``data`` section of ``plm train``'s config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from plm.utils.config import check, check_choice, check_positive

#: ``data.split``: how a labelled dataset is divided (see :class:`DataConfig`)
SPLIT_MODES = ("classes", "images")


@dataclass
class DataConfig:
    """Data options.

    Attributes:
        val_classes: seen classes held out as the class-disjoint validation split used for model
            selection; ``None`` = automatic (20% of the seen classes, at least 2, and none when
            there are fewer than 4 seen classes); ``0`` = no validation, select on training loss.
        limit: train on a seeded random subset of this many training images.
        augment: random resized crop + flip; ``None`` (default) = on in finetune mode, off in frozen
            mode, where it is impossible (asking for it there prints a notice).
        num_workers: DataLoader workers decoding images (finetune mode and embedding passes).
        cache: use the on-disk feature cache for the pretrained features of frozen mode.
        split: ``classes`` (the zero-shot protocol: training on the seen classes, validation on
            held-out seen classes, test on the unseen classes) or ``images`` (every class is
            trained on: a seeded share ``holdout`` of each class's images is held out, half for
            validation and half for test; for a better embedding of one collection rather than
            of kinds of images it has never seen; ``val_classes`` does not apply).
        views: frozen mode: embed this many seeded augmented views of every training image once
            (:mod:`plm.data.views`: random resized crop and flip, as finetune mode augments) and
            train on one of them per image and step; 0 trains on the un-augmented images.
        holdout: the share of each class's images held out with ``split: images`` (classes with
            fewer than 4 images are all trained on); ``0`` trains on every image, with no
            validation or test split.
    """

    val_classes: Optional[int] = None
    limit: Optional[int] = None
    augment: Optional[bool] = None
    num_workers: int = 0
    cache: bool = True
    split: str = "classes"
    holdout: float = 0.2
    views: int = 0

    def __post_init__(self) -> None:
        check_choice("data.split", self.split, SPLIT_MODES)
        check_positive("data.views", self.views, allow_zero=True)
        check(isinstance(self.holdout, (int, float)) and not isinstance(self.holdout, bool)
              and 0.0 <= self.holdout < 1.0, f"data.holdout must be in [0, 1); got {self.holdout!r}")
        check_positive("data.val_classes", self.val_classes, allow_none=True, allow_zero=True)
        check_positive("data.limit", self.limit, allow_none=True)
        check_positive("data.num_workers", self.num_workers, allow_zero=True)
