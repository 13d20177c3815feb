"""Device and mixed-precision choice (one helper for every command) on this CPU-only machine."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from plm.cli import main
from plm.errors import UserError
from plm.utils.device import amp_dtype, autocast, default_workers, resolve_device


def test_auto_picks_cuda_only_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="device must be one of"):
        resolve_device("tpu")


def test_amp_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert amp_dtype("off", cpu) is None
    assert amp_dtype("auto", cpu) is torch.bfloat16 and amp_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        amp_dtype("fp16", cpu)
    with pytest.raises(UserError, match="amp must be one of"):
        amp_dtype("int8", cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype("auto", "cuda") is torch.float16 and amp_dtype("fp16", "cuda") is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype("auto", "cuda") is torch.bfloat16


def test_autocast_runs_matmuls_in_bfloat16_on_cpu() -> None:
    a = torch.randn(4, 4)
    with autocast("cpu", torch.bfloat16):
        assert (a @ a).dtype is torch.bfloat16
    with autocast("cpu", None):
        assert (a @ a).dtype is torch.float32


def test_workers_default_to_none_on_cpu_and_some_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_workers("cpu") == 0 and default_workers("cpu", 3) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_workers("cuda") == 4
    with pytest.raises(UserError):
        default_workers("cpu", -1)


def test_runtime_from_args_and_model_commands_have_the_flags() -> None:
    from plm.cli import build_parser
    from plm.commands._common import runtime_from_args

    rt = runtime_from_args(argparse.Namespace(device="cpu", amp="bf16", workers=None))
    assert rt == {"device": torch.device("cpu"), "amp": torch.bfloat16, "num_workers": 0}
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("embed", "eval", "search", "similarity-report", "train", "demo", "serve"):
        flags = {s for a in sub.choices[name]._actions for s in a.option_strings}
        assert {"--device", "--amp", "--quiet"} <= flags, name


def test_embed_with_bf16_autocast_is_close_to_full_precision() -> None:
    from plm.data.base import ImageDataset
    from plm.evaluation import embed_dataset
    from plm.models import ModelConfig, create_model

    class Noise(ImageDataset):
        name = "noise"

        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(0)
            self._imgs = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(6)]
            self.ids = [str(i) for i in range(6)]
            self.labels = np.zeros(6, np.int64)

        def load_image(self, index: int):
            from PIL import Image

            return Image.fromarray(self._imgs[index])

    model = create_model(ModelConfig("efficientnet_lite0", embed_dim=None, image_size=32), pretrained=True)
    full = embed_dataset(model, Noise(), cache_dir=False, progress=False)
    half = embed_dataset(model, Noise(), cache_dir=False, progress=False, amp=torch.bfloat16)
    assert half.vectors.dtype == np.float32 and half.vectors.shape == full.vectors.shape
    cos = (full.vectors * half.vectors).sum(1)
    assert np.all(cos > 0.98), cos
    assert not np.array_equal(full.vectors, half.vectors)  # it really ran in reduced precision


def test_cli_device_cuda_without_gpu_fails_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "imgs").mkdir()
    assert main(["embed", str(tmp_path / "imgs"), "--out", str(tmp_path / "e.npz"), "--backbone",
                 "efficientnet_lite0", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["embed", str(tmp_path / "imgs"), "--out", str(tmp_path / "e.npz"), "--backbone",
                 "efficientnet_lite0", "--amp", "fp16"]) == 2
    assert "fp16 needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "e.npz").exists()


def test_training_step_runs_under_bf16_autocast(tmp_path) -> None:
    from plm.training import default_config, train

    cfg = default_config("digits", mode="frozen", epochs=1, amp="bf16", log={"progress": False, "tensorboard": False},
                         sampler={"batch_size": 30, "k": 5, "batches_per_epoch": 3}, proxies={"num": 8},
                         data={"limit": 150}, eval={"nmi": False, "baseline": False})
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.config.amp == "bf16"
    assert all(np.isfinite(h["loss"]) for h in result.history if h["epoch"] > 0)
