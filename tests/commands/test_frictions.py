"""Issue 24, items 7 and 9: logs that read right, and the small frictions of a first session.

Each test here failed before issue 24: a progress line and an epoch summary with two different
losses, a TensorBoard notice in every run, faiss's loader chatter with --faiss, the top-level usage
for ``plm train --lr``, "image folder not found" for an existing file, ``split='all'`` where the
flag is ``--split all``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import FROZEN, one_line_error, without_module
from helpers.shapes import make_shapes_folder
from plm.cli import main

#: the tests of this file were written for frozen mode (the default, mode auto, fine-tunes small sets)
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.mark.slow
def test_the_progress_line_and_the_epoch_summary_give_one_loss(tmp_path: Path, monkeypatch, capfd,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PLM_PROGRESS_INTERVAL", "0")  # a line per step, as in a log
    caplog.set_level(logging.INFO)
    assert main(["train", *FROZEN, "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "r"),
                 "sampler.batch_size=30", "sampler.batches_per_epoch=4", "proxies.num=8", "eval.nmi=false"]) == 0
    captured = capfd.readouterr()
    err = captured.err + captured.out + "\n".join(r.getMessage() for r in caplog.records)
    done = re.search(r"epoch 1/1: done, 4 step in \d+ s \([^)]*\), mean loss=([0-9.]+), images/s=\d+", err)
    summary = re.search(r"epoch 1/1  loss ([0-9.]+) ", err)
    assert done and summary, err
    assert done.group(1) == summary.group(1)  # the epoch's mean loss in both
    steps = re.findall(r"epoch 1/1: (\d)/4 step \(\d+%\), \d+ s, [0-9.]+ (?:step/s|s/step), ETA ", err)
    assert steps[:3] == ["1", "2", "3"], err
    assert "tensorboard" not in err.lower()  # no notice about a package plm does not install


def test_no_tensorboard_notice_when_it_is_not_installed(tmp_path: Path, monkeypatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from plm.training.history import TensorBoardLogger

    without_module(monkeypatch, "torch.utils.tensorboard")
    with caplog.at_level(logging.INFO):
        logger = TensorBoardLogger(tmp_path / "tb")
    assert logger.writer is None and [r for r in caplog.records if r.levelno >= logging.INFO] == []


@pytest.mark.slow
def test_faiss_loader_messages_stay_out_of_the_output(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    root = tmp_path / "imgs"
    make_shapes_folder(root, per_class=3)
    run = subprocess.run([sys.executable, "-m", "plm", "eval", "--query", str(root), "--gallery", str(root),
                          "--backbone", "efficientnet_lite0", "--image-size", "32", "--faiss", "--no-nmi"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": SRC, "PLM_CACHE_DIR": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr
    assert "Could not load library" not in run.stderr and "ModuleNotFoundError" not in run.stderr, run.stderr
    assert "faiss" not in run.stderr.lower(), run.stderr


def test_an_unknown_train_flag_gets_trains_usage_and_the_config_key(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--lr", "0.01"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: plm train ") and "plm train: error: unrecognized arguments: --lr" in err
    assert "optim.lr_embedding=" in err and "--print-config" in err
    with pytest.raises(SystemExit):
        main(["train", "--delta", "1.2"])
    assert "loss.delta=" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # other commands: their own usage too, not plm's
        main(["index", "e.npz", "--out", "i.npz", "--no-such-flag"])
    err = capsys.readouterr().err
    assert err.startswith("usage: plm index ") and "--no-such-flag" in err


def test_embed_of_a_file_says_it_is_a_file(tmp_path: Path, capsys) -> None:
    make_shapes_folder(tmp_path / "imgs", per_class=1)
    image = next((tmp_path / "imgs").rglob("*.png"))
    assert main(["embed", str(image), "--out", str(tmp_path / "e.npz")]) == 2
    one_line_error(capsys, f"{image} is a file", "takes a folder", f"plm search INDEX {image}")
    assert not (tmp_path / "e.npz").exists()


def test_a_split_of_an_unlabelled_folder_names_the_flag(tmp_path: Path, capsys) -> None:
    make_shapes_folder(tmp_path / "imgs", per_class=2)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in (tmp_path / "imgs").rglob("*.*"):
        p.rename(flat / p.name)
    assert main(["eval", "--dataset", "folder", "--data-root", str(flat), "--split", "test"]) == 2
    err = one_line_error(capsys, "use --split all")
    assert "split='all'" not in err


def test_the_model_commands_default_to_the_backbone_whose_weights_ship(tmp_path: Path) -> None:
    """Issue 24, 9: no default --backbone although one works out of the box."""
    from plm.search import EmbeddingStore

    make_shapes_folder(tmp_path / "imgs", per_class=1)
    assert main(["embed", str(tmp_path / "imgs"), "--image-size", "32", "--out", str(tmp_path / "e.npz"),
                 "--quiet"]) == 0
    model = EmbeddingStore.load(tmp_path / "e.npz").model
    assert model["source"] == "backbone" and model["backbone"] == "efficientnet_lite0"


def test_users_can_import_torchvision_in_the_environment_plm_installs(tmp_path: Path) -> None:
    """Issue 24, 8: the user's own ``import torchvision`` failed where plm's worked; ``plm.import_torchvision()``
    (README) makes it work in their process."""
    code = ("import plm\n"
            "tv = plm.import_torchvision()\n"
            "import torchvision, torchvision.transforms.v2\n"
            "from torchvision.models import resnet18\n"
            "assert torchvision is tv and resnet18(weights=None).fc.out_features == 1000\n"
            "print('ok', torchvision.__version__)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": SRC})
    assert run.returncode == 0 and run.stdout.startswith("ok "), run.stderr
