"""Issue 24: ``torchrun … -m plm embed`` shards the images across processes (gloo on CPU, 2 processes on
loopback) and writes one embeddings file equal to a single process's, incremental re-embedding kept."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.shapes import make_shapes_folder
from plm.cli import main

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
SRC = str(Path(__file__).resolve().parents[2] / "src")
MODEL = ["--backbone", "efficientnet_lite0", "--image-size", "32", "--batch-size", "4"]


def _torchrun(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "PLM_CACHE_DIR": str(tmp / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "plm", "embed",
           *args, *MODEL]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_two_processes_write_what_one_writes(tmp_path: Path, capsys) -> None:
    from plm.search import EmbeddingStore

    root = tmp_path / "coll"
    make_shapes_folder(root, per_class=5)
    (root / "circles" / "empty.png").write_bytes(b"")  # skipped, with its reason, by both
    single, double = tmp_path / "one.npz", tmp_path / "two.npz"
    assert main(["embed", str(root), "--out", str(single), "--quiet", *MODEL]) == 0
    run = _torchrun(tmp_path, str(root), "--out", str(double))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("embedded 15 new or changed") == 1  # rank 0 alone reports (and writes)
    assert "2 processes embedded 15 image(s) between them" in run.stdout
    a, b = EmbeddingStore.load(single), EmbeddingStore.load(double)
    assert a.paths == b.paths and a.skipped == b.skipped == ["circles/empty.png"]
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    assert a.model["fingerprint"] == b.model["fingerprint"]

    # incremental: two new images and a deleted one; only the new ones are embedded, by the two processes
    make_shapes_folder(root, per_class=1, seed=9, start=50, classes=("squares", "triangles"))
    (root / "circles" / "circle_000.png").unlink()
    shutil.copy(double, tmp_path / "before.npz")
    run = _torchrun(tmp_path, str(root), "--out", str(double))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "embedded 2 new or changed, reused 14, dropped 1 deleted" in run.stdout, run.stdout
    assert main(["embed", str(root), "--out", str(single), "--quiet", *MODEL]) == 0
    a, b = EmbeddingStore.load(single), EmbeddingStore.load(double)
    assert a.paths == b.paths and len(b) == 16
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
