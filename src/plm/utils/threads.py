"""Thread policy: as many intra-op threads as the size of the work pays for.

A second thread halves a large matrix product, but every operation that runs on two threads
waits for both: when another process holds one of the cores, the second thread is scheduled
late and a step made of many small operations (a training step's PL model, proxies and losses
at B ≈ 120) takes several times longer than on one thread. Work below :data:`SMALL_WORK`
multiply-adds per operation gains little from a second thread even on idle cores, so it runs on
one (:func:`threads_for`); large work keeps the pool.
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

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


def _busy_seconds(cpus: set[int]) -> Optional[float]:
    """CPU seconds every process has spent on these cores since boot (Linux ``/proc/stat``), or
    ``None`` where that is not readable."""
    try:
        with open("/proc/stat") as f:
            lines = [line.split() for line in f if line.startswith("cpu") and line[3:4].isdigit()]
    except OSError:
        return None
    ticks = 0
    for fields in lines:
        if int(fields[0][3:]) in cpus:  # user nice system idle iowait irq softirq steal ...
            values = [int(v) for v in fields[1:9]]
            ticks += sum(values) - values[3] - values[4]
    return ticks / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """How many of this process's cores other processes kept busy, on average, since the last
    :meth:`reset` (Linux only): the busy time of the cores this process may run on, less this
    process's own CPU time, over the wall time. A thread pool that shares a core with such work
    waits for its slow thread at every operation (docs/benchmarks.md)."""

    def __init__(self) -> None:
        self.cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
        self.reset()

    def reset(self) -> None:
        """Start a new interval."""
        self._start = (_busy_seconds(self.cpus), time.process_time(), time.perf_counter())

    def cores(self) -> Optional[float]:
        """Average cores used by other processes since :meth:`reset`; ``None`` where unknown."""
        busy0, own0, wall0 = self._start
        busy, own, wall = _busy_seconds(self.cpus), time.process_time(), time.perf_counter()
        if busy0 is None or busy is None or wall - wall0 <= 0:
            return None
        return max(0.0, ((busy - busy0) - (own - own0)) / (wall - wall0))


def pipelined(items: Sequence[T], produce: Callable[[T, torch.Tensor], R], workers: int,
              buffer_numel: int) -> Iterator[tuple[T, R]]:
    """``(item, produce(item, buffer))`` for every item, in order, computed ahead by worker threads.

    Each product runs on one of ``workers`` threads into one of ``workers + 2`` preallocated
    float32 buffers of ``buffer_numel`` entries; a buffer is reused once the caller has moved past
    the item it served, so a yielded result is valid until the next one is asked for. The whole
    iteration runs with one intra-op thread per thread (:func:`limited_threads`), the caller's
    included: the parallelism is the workers', and they take the next item as each comes free,
    so when another process holds a core the worker sharing it simply does fewer items (a
    two-thread pool instead waits for its slower thread at every operation).

    Raises:
        ValueError: ``workers`` < 1. An exception in ``produce`` is raised here, at its item.
    """
    if workers < 1:
        raise ValueError(f"need at least one worker, got {workers}")
    # a new thread's MKL does not follow torch's count (it is set per thread): each worker sets its own
    with limited_threads(1), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="plm-pipe",
                                                initializer=torch.set_num_threads, initargs=(1,)) as pool:
        pending: collections.deque[tuple[T, torch.Tensor, Future[R]]] = collections.deque()
        upcoming = iter(items)

        def submit(buffer: torch.Tensor) -> None:
            for item in upcoming:
                pending.append((item, buffer, pool.submit(produce, item, buffer)))
                return

        try:
            for _ in range(workers + 2):
                submit(torch.empty(buffer_numel))
            while pending:
                item, buffer, future = pending.popleft()
                yield item, future.result()
                submit(buffer)
        finally:
            for _, _, future in pending:
                future.cancel()
