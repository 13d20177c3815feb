"""A core kept busy by another process: the condition a user's machine is often in."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator


@contextlib.contextmanager
def busy_core(enabled: bool = True) -> Iterator[None]:
    """Keep one core busy with a spinning child process for the duration of the block."""
    if not enabled:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let the scheduler see it
        yield
    finally:
        spinner.terminate()
        spinner.wait()
