"""Defaults that fit the data: sizes capped to the training set before feature extraction; clear errors
only when the data are truly too small; the README's small-folder training works end to end."""

from __future__ import annotations

import json
import logging

import pytest

from helpers.cli import FROZEN
from helpers.shapes import make_shapes_folder
from plm.cli import main
from plm.errors import UserError
from plm.training import default_config
from plm.training.sizing import fit_to_data

#: the tests of this file were written for frozen mode (the default, mode auto, fine-tunes small sets)

def test_sizes_are_capped_with_one_notice_each() -> None:
    cfg = default_config("folder", data_root="x", mode="frozen")  # defaults: 100 proxies, batch 120, k 5
    fitted, notices = fit_to_data(cfg, 60)
    assert fitted.proxies.num == 12 and fitted.sampler.batch_size == 60
    assert len(notices) == 2 and all("\n" not in n for n in notices)
    assert any("proxies.num=100" in n and "using 12" in n for n in notices)
    km, notes = fit_to_data(default_config("folder", data_root="x", method="kmeans", mode="frozen"), 23)
    assert km.kmeans.num_clusters == 4 and km.sampler.batch_size == 20 and len(notes) == 2
    dist, _ = fit_to_data(cfg, 58, world_size=4)
    assert dist.sampler.batch_size == 40  # a multiple of k x world size
    same, none = fit_to_data(cfg, 100_000)
    assert same is cfg and none == []


def test_truly_too_small_is_a_clear_error() -> None:
    cfg = default_config("folder", data_root="x")
    with pytest.raises(UserError, match="needs at least 5"):
        fit_to_data(cfg, 4)
    with pytest.raises(UserError, match="needs at least 10"):
        fit_to_data(cfg, 8, world_size=2)
    fit_to_data(cfg, 5)  # one group is enough


def test_too_small_folder_fails_before_any_feature_extraction(tmp_path, monkeypatch, capsys) -> None:
    import plm.evaluation

    def no_embedding(*a, **k):
        raise AssertionError("features were extracted before the size check")

    monkeypatch.setattr(plm.evaluation, "embed_dataset", no_embedding)
    make_shapes_folder(tmp_path / "imgs", per_class=2, classes=("circles",))
    assert main(["train", *FROZEN, "--dataset", "folder", "--data-root", str(tmp_path / "imgs"), "--out",
                 str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "needs at least 5" in err and "Traceback" not in err


@pytest.mark.slow
def test_small_folder_trains_with_capped_sizes_and_exports_to_safetensors(tmp_path, caplog) -> None:
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    make_shapes_folder(tmp_path / "imgs", per_class=20)  # 60 images, 3 classes: 40 seen, 20 unseen
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert main(["train", *FROZEN, "--dataset", "folder", "--data-root", str(tmp_path / "imgs"), "--epochs", "1",
                     "--out", str(run), "--quiet", "model.image_size=32", "log.tensorboard=false"]) == 0
    cfg = (run / "config.yaml").read_text()
    assert "num: 8" in cfg and "batch_size: 40" in cfg
    assert json.loads((run / "summary.json").read_text())["train_images"] == 40
    assert not any("augmentation is not possible" in r.getMessage() for r in caplog.records)

    out = tmp_path / "model.safetensors"
    assert main(["export", str(run / "best.pt"), "--out", str(out)]) == 0
    tensors = st.load_file(str(out))
    config = json.loads((tmp_path / "model.json").read_text())
    from plm.models import ModelConfig, create_model, load_model

    rebuilt = create_model(ModelConfig(**config["model_config"]), pretrained=False)
    rebuilt.load_state_dict(tensors)
    original = load_model(run / "best.pt")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), original(x))
    assert config["embed_dim"] == original.out_dim and config["preprocess"]["input_size"] == 32
    assert config["train_config"]["proxies"]["num"] == 8


@pytest.mark.slow
def test_augmentation_notice_only_when_asked_for(caplog) -> None:
    import torch

    from plm.training.distributed import init_distributed
    from plm.training.pipeline import FrozenPipeline
    from plm.training.splits import load_splits

    assert default_config("digits").data.augment is None and not default_config("digits").augment
    assert default_config("digits", mode="finetune").augment
    assert not default_config("digits", mode="finetune", data={"augment": False}).augment
    for augment, noticed in ((None, False), (True, True)):
        cfg = default_config("digits", data={"augment": augment, "limit": 40})
        caplog.clear()
        with caplog.at_level(logging.INFO):
            FrozenPipeline(cfg, load_splits(cfg), torch.device("cpu"), init_distributed("cpu"), progress=False)
        assert any("computed once from un-augmented images" in r.getMessage() for r in caplog.records) is noticed


def test_mode_auto_finetunes_small_training_sets_and_on_a_gpu() -> None:
    cfg = default_config("folder", data_root="x", mode="auto", data={"views": 4}, model={"train_blocks": 2})
    small, notes = fit_to_data(cfg, 300)  # 224 px, the backbone's own size
    assert small.mode == "finetune" and small.data.views == 0 and small.model.train_blocks == 0
    assert any("mode auto: finetune" in n and "300 training images at 224 px" in n for n in notes)
    large, notes = fit_to_data(cfg, 500)
    assert large.mode == "frozen" and large.data.views == 4 and any("mode auto: frozen" in n for n in notes)
    # counted at 224 px: 1,500 images of 112 px are 375
    low = default_config("folder", data_root="x", mode="auto", model={"image_size": 112})
    fitted, why = fit_to_data(low, 1500)
    assert fitted.mode == "finetune" and "count as 375 at 224 px" in why[0]
    assert fit_to_data(cfg, 5000, device_type="cuda")[0].mode == "finetune"
    assert fit_to_data(default_config("folder", data_root="x", mode="auto", finetune_max_images=5000),
                       5000)[0].mode == "finetune"
    fixed, none = fit_to_data(default_config("folder", data_root="x", mode="frozen"), 100)
    assert fixed.mode == "frozen" and not any("mode" in n for n in none)
