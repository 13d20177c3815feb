"""Shared fixtures. Tests marked ``slow`` run by default; ``pytest -m "not slow"`` leaves them out."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch


def _isolate(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLM_CACHE_DIR", str(tmp_path_factory.mktemp("plm-cache")))
    monkeypatch.setenv("PLM_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _isolated_session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same isolation for module- and session-scoped fixtures, which run before any test's own:
    without it they read and fill the user's ~/.cache/plm (and a stale entry there changes their results)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _isolate(tmp_path_factory, monkeypatch)
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own plm cache folder, so nothing leaks between tests or into ~/.cache, and its
    own (empty) torch hub and Hugging Face caches with downloads off: nothing is downloaded in tests."""
    _isolate(tmp_path_factory, monkeypatch)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests use tiny tensors: they gain nothing from a second thread and lose a lot when other
    processes compete for the cores (each operation then waits for both threads to be scheduled)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
