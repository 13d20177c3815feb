"""Issue 24, item 2: backbones by name (torchvision's classifiers, timm's models), with their published
weights from the standard cache, a download into it (a local file stands in for it: nothing is
downloaded in tests), a local file, or a one-line error naming the file to pass.

Before issue 24 ``--backbone vit_b_16`` was unknown, and googlenet / resnet50 took weights only from a
file the user had to find.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers.shapes import make_shapes_folder
from plm.cli import main
from plm.errors import NoPretrainedWeightsError
from plm.models import Backbone, create_backbone
from plm.models.backbones import Unit
from plm.models.preprocess import PreprocessConfig


def _tv():
    from plm._compat import import_torchvision

    return import_torchvision()


def _composed(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    for unit in backbone.units():
        x = unit(x)
    return x


def _reference(name: str, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's own pooled feature (the classifier's input) of the same network."""
    if name.startswith(("resnet", "googlenet")):
        net.fc = nn.Identity()
        return net(x)
    if name.startswith("vit"):
        net.heads = nn.Identity()
        return net(x)
    return nn.functional.adaptive_avg_pool2d(net.features(x), 1).flatten(1)  # convnext, efficientnet, mobilenet


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("googlenet", 64), ("convnext_tiny", 64),
                                       ("vit_b_16", 224), ("efficientnet_b0", 64), ("mobilenet_v3_small", 64)])
def test_each_family_is_its_steps_and_torchvision_s_own_feature(name: str, size: int) -> None:
    torch.manual_seed(0)
    backbone = create_backbone(name, pretrained=False).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        fmap = backbone(x)
        assert fmap.ndim == 4 and fmap.shape[:2] == (2, backbone.feature_dim)
        assert torch.equal(_composed(backbone, x), fmap)  # composition == forward (model.train_blocks relies on it)
        pooled = fmap.mean(dim=(2, 3))
        ours = backbone.body.net if hasattr(backbone.body, "net") else None
    units = backbone.units()
    assert len(units) >= 4 and all(isinstance(u, Unit) for u in units)
    owned = {id(p) for u in units for p in u.parameters()}
    assert owned == {id(p) for p in backbone.parameters()}  # every weight belongs to exactly the steps
    if ours is None:  # Sequential bodies share the modules of a torchvision network: rebuild it around them
        return
    with torch.no_grad():
        torch.testing.assert_close(pooled, _reference(name, ours, x), rtol=1e-5, atol=1e-5)


def test_a_vit_takes_any_input_size_with_resized_positions() -> None:
    backbone = create_backbone("vit_b_16", pretrained=False).eval()
    with torch.no_grad():
        small = backbone(torch.randn(1, 3, 64, 64))
    assert small.shape == (1, 768, 1, 1) and torch.isfinite(small).all()


def test_preprocessing_follows_the_default_weights() -> None:
    assert create_backbone("convnext_tiny", pretrained=False).preprocess == PreprocessConfig(
        224, 236, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    b0 = create_backbone("efficientnet_b0", pretrained=False).preprocess
    assert (b0.input_size, b0.resize_size, b0.interpolation) == (224, 256, "bicubic")
    assert b0.to_dict()["interpolation"] == "bicubic"
    lite0 = create_backbone("efficientnet_lite0", pretrained=False).preprocess
    assert "interpolation" not in lite0.to_dict()  # bilinear is left out: fingerprints of older files hold


def _state(name: str, classes: int = 1000) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    extra = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    net = _tv().models.get_model(name, weights=None, num_classes=classes, **extra)
    return net.state_dict()


def _param_name(name: str, key: str) -> str:
    return {"mobilenet_v3_small": "body.0.0.weight", "googlenet": "body.net.conv1.conv.weight"}[name]


@pytest.mark.parametrize("name,file,key", [("mobilenet_v3_small", "mobilenet_v3_small-047dcff4.pth",
                                              "features.0.0.weight"),
                                             ("googlenet", "googlenet-1378be20.pth", "conv1.conv.weight")])
def test_weights_come_from_the_standard_cache_offline(tmp_path: Path, monkeypatch, name: str, file: str,
                                                      key: str) -> None:
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = _state(name)
    torch.save(state, cache / file)  # the default weights' file name, as torchvision caches it
    backbone = create_backbone(name)  # PLM_OFFLINE is set: only the cache can serve it
    assert torch.equal(dict(backbone.named_parameters())[_param_name(name, key)], state[key])


def test_a_download_lands_in_the_standard_cache(tmp_path: Path, monkeypatch) -> None:
    import plm.models.weights as weights

    local = tmp_path / "elsewhere.pth"
    state = _state("mobilenet_v3_small")
    torch.save(state, local)
    fetched = []

    def fake_download(url: str, dest: Path) -> None:  # a local file stands in for the network
        fetched.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(local, dest)

    monkeypatch.setenv("PLM_OFFLINE", "0")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights, "download", fake_download)
    backbone = create_backbone("mobilenet_v3_small")
    assert fetched == ["https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth"]
    assert (tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth").is_file()
    assert torch.equal(backbone.body[0][0].weight, state["features.0.0.weight"])
    create_backbone("mobilenet_v3_small")
    assert len(fetched) == 1  # the second time from the cache


def test_a_failed_download_is_one_line_naming_the_file(tmp_path: Path, monkeypatch, capsys) -> None:
    import urllib.error

    import plm.models.weights as weights

    def no_network(url: str, dest: Path) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    make_shapes_folder(tmp_path / "imgs", per_class=1)
    monkeypatch.setenv("PLM_OFFLINE", "0")
    monkeypatch.setattr(weights, "download", no_network)
    assert main(["embed", str(tmp_path / "imgs"), "--backbone", "vit_b_16", "--out", str(tmp_path / "e.npz")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in ("no pretrained weights for vit_b_16 here", "the download failed (URLError", "--weights FILE",
                   "vit_b_16-c867db91.pth from https://download.pytorch.org/models/vit_b_16-c867db91.pth",
                   "hub/checkpoints/vit_b_16-c867db91.pth"):
        assert needle in err, err
    with pytest.raises(NoPretrainedWeightsError, match="pretrained=PATH"):
        create_backbone("convnext_tiny")


@pytest.mark.slow
def test_a_named_backbone_with_a_local_file_embeds_a_folder(tmp_path: Path, capsys) -> None:
    from plm.search import EmbeddingStore

    make_shapes_folder(tmp_path / "imgs", per_class=2)
    torch.save(_state("mobilenet_v3_small"), tmp_path / "w.pth")
    out = tmp_path / "e.npz"
    assert main(["embed", str(tmp_path / "imgs"), "--backbone", "mobilenet_v3_small", "--weights",
                 str(tmp_path / "w.pth"), "--image-size", "64", "--out", str(out)]) == 0
    store = EmbeddingStore.load(out)
    assert store.dim == 576 and store.model["backbone"] == "mobilenet_v3_small" and len(store) == 6
    assert main(["embed", str(tmp_path / "imgs"), "--backbone", "resnet18", "--weights",
                 str(tmp_path / "w.pth"), "--out", str(tmp_path / "r.npz")]) == 2
    assert "seems to be for mobilenet_v3_small" in capsys.readouterr().err


def test_a_backbone_without_steps_says_which_it_is() -> None:
    flat = Backbone(nn.Conv2d(3, 8, 3), 8, PreprocessConfig(32, 36, (0.5,) * 3, (0.5,) * 3), "my-net")
    with pytest.raises(ValueError, match="backbone my-net cannot be split into steps.*model.train_blocks"):
        flat.units()


# ------------------------------------------------------------------------------------------------ timm


@pytest.fixture
def timm():
    return pytest.importorskip("timm")


def test_any_timm_model_by_name(timm) -> None:
    backbone = create_backbone("timm:test_resnet", pretrained=False).eval()
    assert backbone.name == "timm:test_resnet" and backbone.feature_dim == 96
    assert (backbone.preprocess.input_size, backbone.preprocess.resize_size) == (160, 168)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(backbone(x)[:, :, 0, 0], backbone.body.net(x))  # timm's own pooled feature
    with pytest.raises(ValueError, match="backbone timm:test_resnet cannot be split into steps"):
        backbone.units()
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        create_backbone("timm:no_such_net")


def test_timm_weights_from_a_file_and_from_the_hub_cache(timm, tmp_path: Path, monkeypatch) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(2)
    full = timm.create_model("test_resnet", pretrained=False)  # with its classifier, as published
    state = {k: v.contiguous() for k, v in full.state_dict().items()}
    file = tmp_path / "model.safetensors"
    save_file(state, str(file))
    name = "timm:test_resnet.r160_in1k"
    by_file = create_backbone(name, pretrained=file)
    assert torch.equal(by_file.body.net.conv1[0].weight, state["conv1.0.weight"])
    with pytest.raises(NoPretrainedWeightsError, match="model.safetensors from https://huggingface.co/timm/"):
        create_backbone(name)  # offline, not cached
    snapshot = tmp_path / "hf" / "hub" / "models--timm--test_resnet.r160_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    shutil.copy(file, snapshot / "model.safetensors")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cached = create_backbone(name)
    assert torch.equal(cached.body.net.conv1[0].weight, state["conv1.0.weight"])


def test_timm_missing_names_the_extra(monkeypatch) -> None:
    from helpers.cli import without_module

    without_module(monkeypatch, "timm")
    with pytest.raises(ValueError, match=r"pip install 'plm\[timm\]'"):
        create_backbone("timm:resnet50")
