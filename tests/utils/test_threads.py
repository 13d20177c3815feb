"""The thread policy: restored counts, one thread for small work, and the pipelined workers."""

from __future__ import annotations

import threading

import pytest
import torch

from plm.utils.threads import SMALL_WORK, limited_threads, pipelined, threads_for


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_limited_threads_restores_the_count(two_threads) -> None:
    with limited_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), limited_threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="at least one thread"), limited_threads(0):
        pass


def test_threads_for_small_and_large_work(two_threads) -> None:
    with threads_for(SMALL_WORK):
        assert torch.get_num_threads() == 1
    with threads_for(SMALL_WORK + 1):
        assert torch.get_num_threads() == 2


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_pipelined_yields_every_item_in_order_on_worker_threads(two_threads, workers: int) -> None:
    items = list(range(11))
    seen_threads: set[str] = set()
    counts: list[int] = []

    def produce(i: int, buffer: torch.Tensor) -> torch.Tensor:
        seen_threads.add(threading.current_thread().name)
        counts.append(torch.get_num_threads())  # the worker's own setting
        buffer.fill_(float(i))
        return buffer[:3]

    out = []
    for item, value in pipelined(items, produce, workers, buffer_numel=5):
        assert torch.get_num_threads() == 1  # the caller's folds are single-threaded too
        out.append((item, value.tolist()))  # valid until the next item is asked for
    assert out == [(i, [float(i)] * 3) for i in items]
    assert all(name.startswith("plm-pipe") for name in seen_threads)
    assert len(seen_threads) <= workers
    assert counts == [1] * len(items)
    assert torch.get_num_threads() == 2


def test_pipelined_buffers_are_reused_only_after_the_caller_moves_on(two_threads) -> None:
    """No worker writes into the buffer of an item the caller still holds."""
    held: list[int] = []

    def produce(i: int, buffer: torch.Tensor) -> int:
        assert buffer.data_ptr() not in held
        return buffer.data_ptr()

    for _, ptr in pipelined(list(range(30)), produce, 2, buffer_numel=4):
        held.append(ptr)
        torch.ones(2000).cumsum(0)  # some work while the workers run ahead
        held.clear()  # moving on: the buffer may now be reused
    assert torch.get_num_threads() == 2


def test_pipelined_raises_the_producers_error_at_its_item_and_restores_threads(two_threads) -> None:
    def produce(i: int, buffer: torch.Tensor) -> int:
        if i == 4:
            raise KeyError("item 4")
        return i

    got = []
    with pytest.raises(KeyError, match="item 4"):
        for item, _ in pipelined(list(range(9)), produce, 2, buffer_numel=1):
            got.append(item)
    assert got == [0, 1, 2, 3]
    assert torch.get_num_threads() == 2


def test_pipelined_early_stop_and_bad_workers(two_threads) -> None:
    gen = pipelined(list(range(100)), lambda i, b: i, 2, buffer_numel=1)
    assert next(gen) == (0, 0)
    gen.close()  # stops the workers and restores the count
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="at least one worker"):
        next(pipelined([1], lambda i, b: i, 0, buffer_numel=1))
    assert list(pipelined([], lambda i, b: i, 2, buffer_numel=1)) == []


def test_other_load_is_the_busy_time_less_this_process_over_the_wall_time(monkeypatch) -> None:
    """OtherLoad reads the cores' busy seconds, this process's CPU seconds and the wall clock."""
    import plm.utils.threads as threads_module

    clock = {"busy": 100.0, "own": 10.0, "wall": 1000.0}
    monkeypatch.setattr(threads_module, "_busy_seconds", lambda cpus: clock["busy"])
    monkeypatch.setattr(threads_module.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(threads_module.time, "perf_counter", lambda: clock["wall"])
    load = threads_module.OtherLoad()
    clock.update(busy=100.0 + 7.0, own=10.0 + 4.0, wall=1000.0 + 3.0)  # 7 busy core-seconds, 4 of them ours
    assert load.cores() == pytest.approx(1.0)
    load.reset()
    clock.update(busy=clock["busy"] + 2.0, own=clock["own"] + 2.5, wall=clock["wall"] + 1.0)
    assert load.cores() == 0.0  # rounding of the two clocks never gives a negative load
    monkeypatch.setattr(threads_module, "_busy_seconds", lambda cpus: None)  # not Linux
    assert threads_module.OtherLoad().cores() is None


def test_busy_seconds_reads_this_machines_cores() -> None:
    import os
    import sys

    from plm.utils.threads import _busy_seconds

    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/stat is Linux's")
    first = _busy_seconds(set(os.sched_getaffinity(0)))
    assert first is not None and first > 0
    second = _busy_seconds(set(os.sched_getaffinity(0)))
    assert second is not None and second >= first
    assert _busy_seconds(set()) == 0.0
