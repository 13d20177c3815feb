"""Per-epoch metrics: a CSV rewritten atomically each epoch, and TensorBoard when installed."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from plm.errors import TrainingDivergedError
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


def epoch_line(row: dict[str, Any], epochs: int, improved: bool) -> str:
    """The log line of a trained epoch's ``metrics.csv`` row."""
    terms = "  ".join(f"{k[5:]} {v:.4f}" for k, v in row.items() if k.startswith("loss_"))
    val = f"  val MAP@R {row['val_map_at_r']:.4f}" if row.get("val_map_at_r") is not None else ""
    return (f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f} ({terms}){val}  {row['time_s']:.1f} s"
            f"{'  *best' if improved else ''}")


class EpochMeter:
    """The running means of an epoch's loss terms, its progress bar and its ``metrics.csv`` row.

    Args:
        epoch: the epoch (0-based).
        epochs: the run's number of epochs.
        steps: the epoch's number of steps.
        batch_size: images per (global) batch.
        progress: show the progress bar.
    """

    def __init__(self, epoch: int, epochs: int, steps: int, batch_size: int, progress: bool) -> None:
        from plm.utils.progress import progress as progress_bar

        self.epoch, self.batch_size, self.steps = epoch, batch_size, 0
        self.sums: dict[str, float] = {}
        self.start = time.perf_counter()
        self.bar = progress_bar(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step", disable=not progress,
                                leave=False)

    def _elapsed(self) -> float:
        return time.perf_counter() - self.start

    def add(self, terms: dict[str, float]) -> None:
        """Count one step's (global) loss terms; the bar shows the epoch's mean loss so far.

        Raises:
            TrainingDivergedError: the step's loss is not finite.
        """
        self.sums = {k: self.sums.get(k, 0.0) + v for k, v in terms.items()}
        self.steps += 1
        if not math.isfinite(terms["loss"]):
            raise TrainingDivergedError(f"training diverged (non-finite loss {terms['loss']}) at epoch "
                                        f"{self.epoch + 1} step {self.steps}; lower the learning rates (optim.lr_*) "
                                        "or set optim.grad_clip")
        self.bar.set_postfix(**{"mean loss": f"{self.sums['loss'] / self.steps:.4f}",
                                "images/s": f"{self.steps * self.batch_size / self._elapsed():.0f}"})
        self.bar.update(1)

    def row(self, global_step: int, param_groups: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The epoch's row: mean loss and terms, each group's learning rate, time and throughput."""
        self.bar.close()
        elapsed, n = self._elapsed(), max(self.steps, 1)
        sums = dict(self.sums)
        row: dict[str, Any] = {"epoch": self.epoch + 1, "step": global_step, "loss": sums.pop("loss") / n}
        row.update({f"loss_{k}": v / n for k, v in sums.items()})
        for group in param_groups:
            row.setdefault(f"lr_{group['name']}", group["lr"])
        row["time_s"] = round(elapsed, 3)
        row["images_per_s"] = round(self.steps * self.batch_size / max(elapsed, 1e-9), 1)
        return row
