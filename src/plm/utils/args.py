"""Argument types for command-line flags: each value is checked where it is read, with its range."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_at_least(low: int) -> Callable[[str], int]:
    """An ``argparse`` type accepting integers ``>= low`` (the message states the range)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


#: integers >= 1 (counts: -k, --nlist, --nprobe, --recall-sample, --batch-size, --epochs …)
positive_int = int_at_least(1)
#: integers >= 0 (seeds, --val-classes)
non_negative_int = int_at_least(0)
