"""Progress that reads well everywhere: a tqdm bar on a terminal, plain lines in a log.

On a terminal (``stderr`` is a TTY) :func:`progress` is a tqdm bar. Anywhere else (a batch job,
``nohup``, CI) a bar's carriage returns turn into spam, so it prints one plain line per interval
(``PLM_PROGRESS_INTERVAL`` seconds, default 30) with the rate and the time left, and a last line
when done (skipped for a pass shorter than 5 s), e.g.::

    embed folder/all: 1920/6400 img (30%), 31 s, 61.9 img/s, ETA 1 min 12 s
    embed folder/all: done, 6400 img in 98 s (65.3 img/s)

A rate below one per second is written the other way round (``12.5 s/step``), never as ``0.0 step/s``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Optional, TextIO

DEFAULT_INTERVAL = 30.0


def format_rate(count: float, seconds: float, unit: str) -> str:
    """``61.9 img/s``, or ``12.5 s/step`` when fewer than one per second (empty when nothing was counted)."""
    if count <= 0 or seconds <= 0:
        return ""
    rate = count / seconds
    return f"{rate:.1f} {unit}/s" if rate >= 1 else f"{seconds / count:.1f} s/{unit}"


def format_duration(seconds: float) -> str:
    """``45 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("PLM_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


class LineProgress:
    """The non-TTY progress: the tqdm methods plm uses (``update``, ``set_postfix``, ``close``, iteration).

    Args:
        iterable: what to iterate (optional).
        total: expected count (``len(iterable)`` when it has one).
        desc: what is progressing.
        unit: the unit of the count.
        disable: print nothing.
        stream: where lines go (default ``sys.stderr``).
        interval: seconds between lines (default ``PLM_PROGRESS_INTERVAL`` or 30).
    """

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "",
                 unit: str = "it", disable: bool = False, stream: Optional[TextIO] = None,
                 interval: Optional[float] = None, **_: Any):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.stream = stream
        self.interval = _interval() if interval is None else interval
        self.n = 0
        self.postfix = ""
        self.start = self._last = time.monotonic()
        self.closed = False
        self.lines = 0

    def _out(self) -> TextIO:
        return self.stream or sys.stderr

    def _line(self, now: float) -> str:
        elapsed = now - self.start
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = format_rate(self.n, elapsed, self.unit)
        eta = ""
        if self.total and self.n and elapsed > 0:
            eta = f", ETA {format_duration((self.total - self.n) * elapsed / self.n)}"
        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {count} {self.unit}{pct}, {elapsed:.0f} s{', ' + rate if rate else ''}{eta}{post}"

    def update(self, n: int = 1) -> None:
        """Count ``n`` more; print a line when the interval has passed."""
        self.n += n
        if self.disable:
            return
        now = time.monotonic()
        if now - self._last >= self.interval and (self.total is None or self.n < self.total):
            self._last = now
            self.lines += 1
            print(self._line(now), file=self._out(), flush=True)

    def set_postfix(self, **values: Any) -> None:
        """Extra ``key=value`` items shown at the end of the next line."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        """Print the last line (once), unless the whole run took less than one interval (and 5 s)."""
        if self.closed:
            return
        self.closed = True
        elapsed = time.monotonic() - self.start
        if not self.disable and (self.lines or elapsed >= min(self.interval, 5.0)):
            post = f", {self.postfix}" if self.postfix else ""
            rate = format_rate(self.n, elapsed, self.unit)
            print(f"{self.desc}: done, {self.n} {self.unit} in {elapsed:.0f} s{f' ({rate})' if rate else ''}{post}",
                  file=self._out(), flush=True)

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LineProgress was created without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def is_terminal(stream: Optional[TextIO] = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``) is an interactive terminal."""
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "", unit: str = "it",
             disable: bool = False, leave: bool = False, **kwargs: Any) -> Any:
    """A tqdm bar on a terminal, else a :class:`LineProgress` (same calls: iterate, ``update``, ``close``)."""
    if is_terminal():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, **kwargs)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, disable=disable, **kwargs)
