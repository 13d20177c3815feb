"""Shared fixtures and the ``--runslow`` switch for tests marked ``slow``."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own plm cache folder, so nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("PLM_CACHE_DIR", str(tmp_path_factory.mktemp("plm-cache")))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
