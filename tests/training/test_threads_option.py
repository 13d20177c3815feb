"""``threads``: the most intra-op threads a run trains with, and the note when other work holds cores."""

from __future__ import annotations

import logging

import pytest
import torch

from plm.utils.config import ConfigError


def _config(**extra):
    from plm.training import default_config

    return default_config("digits", method="plm", mode="frozen", epochs=2,
                          log={"progress": False, "tensorboard": False},
                          sampler={"batch_size": 30, "k": 5, "batches_per_epoch": 2}, proxies={"num": 6},
                          eval={"nmi": False, "baseline": False}, data={"limit": 300}, model={"embed_dim": 32},
                          **extra)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_threads_must_be_a_positive_integer(bad) -> None:
    with pytest.raises(ConfigError, match="threads"):
        _config(threads=bad)


def test_a_run_trains_with_at_most_its_threads_and_restores_the_count(tmp_path, monkeypatch) -> None:
    from plm.training.trainer import Trainer

    monkeypatch.setenv("PLM_CACHE_DIR", str(tmp_path / "cache"))
    seen: list[int] = []
    original = Trainer.run_epoch

    def run_epoch(self, epoch):
        seen.append(torch.get_num_threads())
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        Trainer(_config(threads=1), tmp_path / "one", progress=False).run()
        assert seen == [1, 1] and torch.get_num_threads() == 2
        seen.clear()
        Trainer(_config(), tmp_path / "default", progress=False).run()
        assert seen == [2, 2]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("others,noted", [(1.0, True), (0.2, False)])
def test_training_says_when_other_processes_hold_a_core(tmp_path, monkeypatch, caplog, others, noted) -> None:
    from plm.training.trainer import Trainer
    from plm.utils.threads import OtherLoad

    monkeypatch.setenv("PLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(OtherLoad, "cores", lambda self: others)
    monkeypatch.setattr(OtherLoad, "__init__", lambda self: setattr(self, "cpus", {0, 1}))
    monkeypatch.setattr(OtherLoad, "reset", lambda self: None)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with caplog.at_level(logging.INFO, logger="plm"):
            Trainer(_config(), tmp_path / "run", progress=False).run()
    finally:
        torch.set_num_threads(before)
    notes = [r.getMessage() for r in caplog.records if "other processes kept" in r.getMessage()]
    if noted:  # once per run, with the count that fits the free core
        assert len(notes) == 1 and "threads=1 trains faster" in notes[0] and "during epoch 1" in notes[0]
    else:
        assert notes == []
