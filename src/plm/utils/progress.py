"""Progress that reads well everywhere: a tqdm bar on a terminal, plain lines in a log.

On a terminal (``stderr`` is a TTY) :func:`progress` is a tqdm bar. Anywhere else (a batch job,
``nohup``, CI) a bar's carriage returns turn into spam, so it prints one plain line per interval
(``PLM_PROGRESS_INTERVAL`` seconds, default 30) and a last line when done (skipped for a pass
shorter than 5 s), e.g.::

    embed folder/all: 120/400 batch (30%), 31 s, 3.9 batch/s
    embed folder/all: done, 400 batch in 98 s
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Optional, TextIO

DEFAULT_INTERVAL = 30.0


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
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 and self.n else ""
        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {count} {self.unit}{pct}, {elapsed:.0f} s{rate}{post}"

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
            print(f"{self.desc}: done, {self.n} {self.unit} in {elapsed:.0f} s{post}", file=self._out(), flush=True)

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
