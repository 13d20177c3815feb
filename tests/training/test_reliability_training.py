"""Issue 14 (training part): checkpoints consistent under a kill at any instant, a feature cache
that is keyed by file content and heals when damaged, and training values refused before the long
work (batch size, divergence). Each case failed on the code before these changes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.cli import FROZEN
from plm.cli import main
from plm.training import default_config, train

KILLED = 77
#: the tests of this file were written for frozen mode (the default, mode auto, fine-tunes small sets)

@pytest.fixture(scope="module")
def _features(tmp_path_factory):
    return tmp_path_factory.mktemp("digits-features")


@pytest.fixture
def shared_cache(_features, monkeypatch):
    monkeypatch.setenv("PLM_CACHE_DIR", str(_features))
    return _features


def tiny(**kw):
    over = {"epochs": 2, "mode": "frozen", "log": {"progress": False, "tensorboard": False},
            "model": {"embed_dim": 128},
            "sampler": {"batch_size": 30, "k": 5, "batches_per_epoch": 2}, "proxies": {"num": 8},
            "eval": {"nmi": False, "baseline": False, "val_limit": 150, "test_limit": 200}}
    over.update(kw)
    return default_config("digits", **over)


def _states(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {f"{part}.{k}": v for part in ("student_state", "teacher_state", "method_state", "model_state")
            for k, v in ckpt[part].items()}


# ------------------------------------------------------------------------------ 3. kills at every write step

_KILL_DRIVER = """
import json, os, sys
out, point, counter = sys.argv[1], int(sys.argv[2]), sys.argv[3]
real_fsync, real_replace = os.fsync, os.replace
seen = [0]

def step(path):
    if out not in path:
        return False
    seen[0] += 1
    with open(counter, "w") as fh:
        fh.write(str(seen[0]))
    return seen[0] == point

def fsync(fd):
    if step(os.readlink(f"/proc/self/fd/{fd}")):
        os.ftruncate(fd, os.fstat(fd).st_size // 2)  # killed during the write
        os._exit(77)
    return real_fsync(fd)

def replace(src, dst):
    real_replace(src, dst)
    if step(str(dst)):  # killed between writes
        os._exit(77)

os.fsync, os.replace = fsync, replace
from plm.training import TrainConfig, train

train(TrainConfig.from_dict(json.loads(sys.argv[4])), out, progress=False, resume=True)
"""


#: the thread settings of every training process of the kill test: the uninterrupted, the killed
#: and the resumed runs all run in subprocesses with the same settings, so that "equal" does not
#: depend on how a thread pool splits a sum (a run with two threads and one with one thread may
#: differ in the last bits, and those bits grow over the epochs)
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _run_killed_at(cfg, out: Path, point: int, counter: Path) -> int:
    """Train in a subprocess that dies (``os._exit``, no clean-up) at write step ``point`` of the
    run folder: the n-th fsync of a temporary file (first cut to half its size: a kill during the
    write) or the n-th rename (a kill between writes); a ``point`` past the run's last write step
    trains (or resumes) to the end. Returns the subprocess's exit code."""
    import subprocess
    import sys

    import plm

    env = {**os.environ, "PYTHONPATH": str(Path(plm.__file__).resolve().parents[1]), **_ONE_THREAD}
    res = subprocess.run([sys.executable, "-c", _KILL_DRIVER, str(out), str(point), str(counter),
                          json.dumps(cfg.to_dict())], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode in (0, KILLED), res.stderr[-3000:]
    return res.returncode


@pytest.mark.slow
def test_a_run_killed_at_any_write_step_resumes_to_the_same_result(tmp_path, shared_cache) -> None:
    cfg = tiny()
    never = 10**6  # a write step no run reaches: the run is not killed
    counter = tmp_path / "count"
    assert _run_killed_at(cfg, tmp_path / "straight", never, counter) == 0  # also fills the feature cache
    total = int(counter.read_text())
    assert total >= 12  # config, pending best, last, best, csv per epoch, metrics, summary: fsync + rename each
    expected_metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    expected_last = _states(tmp_path / "straight" / "last.pt")
    expected_best = _states(tmp_path / "straight" / "best.pt")
    expected_best_epoch = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["best"]["epoch"]
    for point in range(1, total + 1):
        out = tmp_path / f"kill{point}"
        assert _run_killed_at(cfg, out, point, counter) == KILLED, point
        assert _run_killed_at(cfg, out, never, counter) == 0, point  # resumed to the end
        last = torch.load(out / "last.pt", weights_only=True)
        assert last["best"]["epoch"] == expected_best_epoch, point
        assert json.loads((out / "metrics.json").read_text()) == expected_metrics, point
        for name, expected in (("last.pt", expected_last), ("best.pt", expected_best)):
            got = _states(out / name)
            assert got.keys() == expected.keys(), (point, name)
            for key in got:
                assert torch.equal(got[key], expected[key]), (point, name, key)
        assert torch.load(out / "best.pt", weights_only=True)["epoch"] == last["best"]["epoch"], point
        leftovers = [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".pending"))]
        assert leftovers == [], (point, leftovers)
        shutil.rmtree(out)


def test_killed_between_last_and_best_is_rolled_forward(tmp_path, shared_cache) -> None:
    """The issue's case: last.pt committed epoch 2 as best, best.pt still epoch 1 (the pending file
    not yet renamed); resuming must finish the commit, not keep the stale best."""
    from plm.training.checkpoint import pending_best_path, recover_checkpoints

    out = tmp_path / "run"
    (out).mkdir()
    payload = {"epoch": 2, "best": {"epoch": 2, "value": 0.5}}
    torch.save({"epoch": 1, "best": {"epoch": 1}}, out / "best.pt")
    torch.save(payload, out / "last.pt")
    torch.save(payload, pending_best_path(out / "best.pt"))
    (out / ".last.pt.abcd1234.tmp").write_bytes(b"half a checkpoint")
    done = recover_checkpoints(out)
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt"], done
    # an uncommitted pending best (last.pt still names epoch 1) is discarded
    torch.save({"epoch": 3}, pending_best_path(out / "best.pt"))
    torch.save({"epoch": 2, "best": {"epoch": 2}}, out / "last.pt")
    recover_checkpoints(out)
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 2
    assert not pending_best_path(out / "best.pt").exists()


def test_an_unreadable_last_keeps_the_pending_best(tmp_path) -> None:
    """Issue 27: with last.pt unreadable, whether it committed the pending best is unknown; recovery deleted
    the intact best.pt.pending (the only copy of that epoch's best weights). It now keeps it."""
    from plm.training.checkpoint import pending_best_path, recover_checkpoints

    out = tmp_path / "run"
    out.mkdir()
    pending = pending_best_path(out / "best.pt")
    torch.save({"epoch": 3, "best": {"epoch": 3}}, pending)
    (out / "last.pt").write_bytes(b"half a checkpoint")
    done = recover_checkpoints(out)
    assert pending.is_file() and torch.load(pending, weights_only=True)["epoch"] == 3
    assert any("kept best.pt.pending" in line for line in done), done
    (out / "last.pt").unlink()  # no last.pt at all: nothing was committed, so it goes
    recover_checkpoints(out)
    assert not pending.exists()


def test_a_write_failure_keeps_the_previous_checkpoints(tmp_path, shared_cache, capsys, monkeypatch) -> None:
    """Disk full while writing epoch 2's checkpoint: one line, epoch 1's last.pt / best.pt intact."""
    import errno

    from plm.utils import io as plm_io

    out = tmp_path / "run"
    real = plm_io._atomic_write

    def full_after_epoch_one(path, write, wrap=False):
        # the disk fills once last.pt holds epoch 1 (epoch 0, the untrained model, is committed first)
        last = out / "last.pt"
        if (Path(path).name in ("last.pt", "best.pt.pending") and last.exists()
                and torch.load(last, weights_only=True)["epoch"] >= 1):
            raise plm_io.write_error(path, OSError(errno.ENOSPC, "No space left on device"))
        return real(path, write, wrap)

    monkeypatch.setattr(plm_io, "_atomic_write", full_after_epoch_one)
    code = main(["train", *FROZEN, "--dataset", "digits", "--out", str(out), "--no-progress", "--epochs", "2",
                 "sampler.batch_size=30", "sampler.batches_per_epoch=2", "proxies.num=8", "eval.nmi=false",
                 "log.tensorboard=false"])
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "disk full" in err and str(out) in err, err
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 1  # epoch 1's committed pair is intact: last.pt and the best it names
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == last["best"]["epoch"]
    assert not [p for p in out.iterdir() if p.name.endswith((".tmp", ".pending"))]


# ------------------------------------------------------------------------------ 5. the feature cache

def _folder(root: Path, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


@pytest.fixture(scope="module")
def small_model():
    from plm.models import ModelConfig, create_model

    return create_model(ModelConfig(embed_dim=None, pooling="avg", image_size=32))


def test_repairing_an_image_changes_the_cache_key(tmp_path, small_model) -> None:
    from plm.data.folder import load_image_folder
    from plm.evaluation import embed_dataset

    root = tmp_path / "imgs"
    _folder(root)
    good = (root / "a" / "0.png").read_bytes()
    (root / "a" / "0.png").write_bytes(good[:50])  # truncated
    first = embed_dataset(small_model, load_image_folder(root), progress=False)
    assert first.skipped == ["a/0.png"]
    (root / "a" / "0.png").write_bytes(good)  # repaired
    second = embed_dataset(small_model, load_image_folder(root), progress=False)
    assert second.skipped == [] and len(second.ids) == 12


@pytest.mark.parametrize("damage", ["truncate", "zero", "random", "wrong-vectors", "old-format"])
def test_a_damaged_cache_entry_is_discarded_and_recomputed(tmp_path, small_model, damage, caplog) -> None:
    from plm.data.folder import load_image_folder
    from plm.evaluation import embed_dataset

    root = tmp_path / "imgs"
    _folder(root)
    fresh = embed_dataset(small_model, load_image_folder(root), progress=False)
    (entry,) = (Path(os.environ["PLM_CACHE_DIR"]) / "features").glob("*.npz")
    data = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "zero":
        entry.write_bytes(b"")
    elif damage == "random":
        entry.write_bytes(np.random.default_rng(1).bytes(len(data)))
    else:
        with np.load(entry) as z:
            arrays = {k: z[k] for k in z.files}
        if damage == "wrong-vectors":
            arrays["vectors"] = arrays["vectors"] + 1.0  # plausible but not what was computed
        else:
            arrays.pop("digest")
        np.savez(entry, **arrays)
    with caplog.at_level("WARNING"):
        again = embed_dataset(small_model, load_image_folder(root), progress=False)
    assert "is damaged" in caplog.text and "recomputing" in caplog.text
    np.testing.assert_array_equal(again.vectors, fresh.vectors)
    assert again.ids == fresh.ids
    caplog.clear()
    with caplog.at_level("WARNING"):
        healed = embed_dataset(small_model, load_image_folder(root), progress=False)  # the rewritten entry
    assert "damaged" not in caplog.text
    np.testing.assert_array_equal(healed.vectors, fresh.vectors)


@pytest.mark.slow
def test_train_heals_a_truncated_feature_cache(tmp_path, shared_cache) -> None:
    cfg = tiny(epochs=1)
    train(cfg, tmp_path / "a", progress=False)
    entries = list((shared_cache / "features").glob("*.npz"))
    assert entries
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:100])
    train(cfg, tmp_path / "b", progress=False)
    assert json.loads((tmp_path / "a" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "b" / "metrics.json").read_text())


# ------------------------------------------------------------------------------ 6. training values

def test_batch_size_is_bounded_before_feature_extraction(tmp_path, shared_cache, capsys, monkeypatch) -> None:
    import plm.evaluation.embed as embed_mod
    import plm.training.sizing as sizing

    monkeypatch.setattr(embed_mod, "embed_dataset", lambda *a, **k: pytest.fail("features before the check"))
    # a batch larger than the training set is capped to it before any feature extraction (issue 13's
    # sizing, with a notice); what it is capped to must still fit in memory, or the run stops here
    monkeypatch.setattr(sizing, "_available_memory", lambda device: 100_000)
    assert main(["train", *FROZEN, "--dataset", "digits", "--out", str(tmp_path / "r"), "--no-progress",
                 "sampler.batch_size=100000"]) == 2
    err = capsys.readouterr().err
    assert "GiB" in err and "use at most" in err and "Traceback" not in err, err
    assert main(["train", *FROZEN, "--dataset", "digits", "--out", str(tmp_path / "r2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "GiB" in err and "use at most" in err and "Traceback" not in err, err


@pytest.mark.slow
def test_divergence_is_one_line(tmp_path, shared_cache, capsys, monkeypatch) -> None:
    from plm.training.trainer import Trainer

    real = Trainer.step

    def nan_step(self, inputs, positions):
        terms = real(self, inputs, positions)
        return {**terms, "loss": float("nan")}

    monkeypatch.setattr(Trainer, "step", nan_step)
    assert main(["train", *FROZEN, "--dataset", "digits", "--out", str(tmp_path / "r"), "--no-progress",
                 "--epochs", "1",
                 "sampler.batch_size=30", "sampler.batches_per_epoch=2", "proxies.num=8", "eval.nmi=false"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "training diverged" in err and "epoch 1 step 1" in err, err
    assert "lower the learning rate" in err


def test_batch_larger_than_the_training_set_is_refused_by_the_check() -> None:
    import torch

    from plm.errors import UserError
    from plm.training.config import default_config
    from plm.training.sizing import check_batch_size

    with pytest.raises(UserError, match="sampler.batch_size must be at most the 50 training images"):
        check_batch_size(default_config("digits", sampler={"batch_size": 60}), 50, torch.device("cpu"))
