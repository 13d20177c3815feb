"""Argument types for command-line flags: each value is checked where it is read, with its range."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Optional

from plm.utils.config import MAX_SEED


def int_at_least(low: int, high: Optional[int] = None) -> Callable[[str], int]:
    """An ``argparse`` type accepting integers ``>= low`` (and ``<= high``); the message states the range.

    Only ASCII digits (with an optional sign) of at most 30 characters are read.
    """
    want = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]{1,30}", text.strip()):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text[:40]!r}")
        value = int(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {want}, got {value}")
        return value

    parse.__name__ = want
    return parse


#: integers >= 1 (counts: -k, --nlist, --nprobe, --recall-sample, --batch-size, --epochs …)
positive_int = int_at_least(1)
#: integers >= 0 (--val-classes, --workers)
non_negative_int = int_at_least(0)
#: seeds: 0 to :data:`plm.utils.config.MAX_SEED`
seed_int = int_at_least(0, MAX_SEED)
