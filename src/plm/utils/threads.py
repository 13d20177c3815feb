"""Thread policy: as many intra-op threads as the size of the work pays for.

A second thread halves a large matrix product, but every operation that runs on two threads
waits for both: when another process holds one of the cores, the second thread is scheduled
late and a step made of many small operations (a training step's PL model, proxies and losses
at B ≈ 120) takes several times longer than on one thread. Work below :data:`SMALL_WORK`
multiply-adds per operation gains little from a second thread even on idle cores, so it runs on
one (:func:`threads_for`); large work keeps the pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: multiply-adds of the largest operation below which one thread is used: 2^26 ≈ 67 M, about a
#: millisecond of one core, where a second thread saves at most about half a millisecond
SMALL_WORK = 2 ** 26


@contextlib.contextmanager
def limited_threads(n: int = 1) -> Iterator[None]:
    """Run the block with at most ``n`` intra-op threads, then restore the previous count.

    Raises:
        ValueError: ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"need at least one thread, got {n}")
    before = torch.get_num_threads()
    if before <= n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_for(work: int) -> contextlib.AbstractContextManager:
    """One thread for work of at most :data:`SMALL_WORK` multiply-adds in its largest operation,
    else the current pool (a context manager either way)."""
    return limited_threads(1) if work <= SMALL_WORK else contextlib.nullcontext()
