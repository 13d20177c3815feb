"""Per-epoch metrics: a CSV rewritten atomically each epoch, and TensorBoard when installed."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from plm.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """All rows as CSV (columns: union of keys, fullest row first; missing cells empty)."""
    columns: list[str] = []
    for row in sorted(rows, key=len, reverse=True):
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_bytes(buf.getvalue().encode(), path)


class TensorBoardLogger:
    """Scalars to TensorBoard under ``folder`` when ``torch.utils.tensorboard`` imports; else nothing,
    silently (``log.tensorboard`` asks for TensorBoard where it is installed; plm does not install it)."""

    def __init__(self, folder: str | os.PathLike, enabled: bool = True):
        self.writer: Optional[Any] = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: metrics.csv has everything
            log.debug("tensorboard is not installed: metrics go to metrics.csv only")
            return
        self.writer = SummaryWriter(str(Path(folder)))

    def log(self, row: dict[str, Any], step: int) -> None:
        """Write every numeric value of ``row`` at ``step``."""
        if self.writer is None:
            return
        for key, value in row.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        """Close the writer."""
        if self.writer is not None:
            self.writer.close()
