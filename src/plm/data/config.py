"""The ``data`` section of ``plm train``'s config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from plm.utils.config import check_positive


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
    """

    val_classes: Optional[int] = None
    limit: Optional[int] = None
    augment: Optional[bool] = None
    num_workers: int = 0
    cache: bool = True

    def __post_init__(self) -> None:
        check_positive("data.val_classes", self.val_classes, allow_none=True, allow_zero=True)
        check_positive("data.limit", self.limit, allow_none=True)
        check_positive("data.num_workers", self.num_workers, allow_zero=True)
