"""torchvision's ImageNet classifiers as plm backbones: a feature map, its preprocessing, and its steps.

Each family gives the network up to its last feature map, in steps whose composition is that map
(:meth:`plm.models.backbones.Backbone.units`, for ``model.train_blocks``):

- ``resnet`` (ResNet, ResNeXt, Wide ResNet): the stem's layers, then ``layer1`` … ``layer4``;
- ``convnext``: the stem, each stage and each downsampling (the classifier's LayerNorm is not applied:
  the map is the last stage's output, as timm's ``forward_features``);
- ``efficientnet``, ``mobilenet``: each block of ``features``;
- ``googlenet``: the input transform with the first convolution, then each layer;
- ``vit``: the patch embedding (class token and position embedding, resized to the input's patch
  grid so any input size works), each encoder block, then the final LayerNorm; the map is the class
  token as a (C, 1, 1) map, so pooling gives the classifier's own feature.

Preprocessing is that of torchvision's default weights (crop, resize, interpolation; ImageNet mean and
std), except ``resnet50`` and ``googlenet``, which keep plm's earlier settings (224/256, 227/256).
Pretrained weights are torchvision's default ones, found by :mod:`plm.models.weights`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from plm.models.backbones import TORCHVISION_FAMILIES, Backbone, Pretrained, Unit, load_checked, read_weights_file
from plm.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig

#: plm's preprocessing before torchvision's defaults were followed: (crop, resize), kept for these names so
#: that embeddings files and indexes made with them stay valid
KEPT_PREPROCESS = {"resnet50": (224, 256), "googlenet": (227, 256)}


def torchvision() -> Any:
    """The torchvision package (through plm's import shim)."""
    from plm._compat import import_torchvision

    return import_torchvision()


def network(name: str, pretrained: bool = False) -> nn.Module:
    """torchvision's model ``name`` with random weights (set up to receive ``pretrained`` ones)."""
    get_model = torchvision().models.get_model
    if name == "googlenet":
        # Our preprocessing normalises with ImageNet mean/std; the released GoogLeNet weights expect that
        # input converted back to the original Inception scaling (transform_input=True, as torchvision sets it).
        return get_model(name, weights=None, aux_logits=False, init_weights=not pretrained, transform_input=pretrained)
    return get_model(name, weights=None)


def default_weights(name: str) -> Any:
    """torchvision's default weights enum member of ``name`` (its URL and transforms)."""
    return torchvision().models.get_model_weights(name).DEFAULT


def preprocess_of(name: str) -> PreprocessConfig:
    """The input size, resize and interpolation of ``name``'s default weights (ImageNet normalisation)."""
    if name in KEPT_PREPROCESS:
        crop, resize = KEPT_PREPROCESS[name]
        return PreprocessConfig(input_size=crop, resize_size=resize, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    keywords = dict(default_weights(name).transforms.keywords)
    mode = keywords.get("interpolation")
    return PreprocessConfig(input_size=int(keywords["crop_size"]), resize_size=int(keywords.get("resize_size", 256)),
                            mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation=getattr(mode, "value", "bilinear"))


def feature_dim_of(net: nn.Module, family: str) -> int:
    """The channels of the family's feature map."""
    m = cast(Any, net)
    if family in ("resnet", "googlenet"):
        return int(m.fc.in_features)
    if family == "vit":
        return int(m.hidden_dim)
    if family == "convnext":
        return int(m.classifier[-1].in_features)
    convs = [mod for mod in m.features.modules() if isinstance(mod, nn.Conv2d)]  # efficientnet, mobilenet
    return int(convs[-1].out_channels)


_GOOGLENET_LAYERS = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
                     "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d",
                     "inception4e", "maxpool4", "inception5a", "inception5b")


class StepsBody(nn.Module):
    """A body that is its steps: ``forward`` runs :meth:`units` in order (so the two cannot disagree)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.units():
            x = step(x)
        return x

    def units(self) -> list[Unit]:
        raise NotImplementedError


class GoogLeNetBody(StepsBody):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def units(self) -> list[Unit]:
        """The input transform with the first convolution, then each layer of ``_GOOGLENET_LAYERS``."""
        n = self.net
        first = n.get_submodule(_GOOGLENET_LAYERS[0])
        transform = cast(Callable[[torch.Tensor], torch.Tensor], n._transform_input)
        rest = [n.get_submodule(name) for name in _GOOGLENET_LAYERS[1:]]
        return [Unit(lambda x: first(transform(x)), (first,))] + [Unit(m, (m,)) for m in rest]


class _Tokens(nn.Module):
    """A ViT's patch embedding, class token and position embedding (sharing the network's parameters)."""

    def __init__(self, conv_proj: nn.Module, class_token: nn.Parameter, pos_embedding: nn.Parameter,
                 dropout: nn.Module):
        super().__init__()
        self.conv_proj, self.class_token, self.pos_embedding, self.dropout = conv_proj, class_token, pos_embedding, \
            dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.conv_proj(x)  # (B, C, gh, gw)
        gh, gw = p.shape[-2:]
        tokens = torch.cat([self.class_token.expand(p.shape[0], -1, -1), p.flatten(2).transpose(1, 2)], dim=1)
        return self.dropout(tokens + resized_positions(self.pos_embedding, gh, gw))


def resized_positions(pos: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """A ViT position embedding (1, 1 + S², C) for a ``gh`` × ``gw`` patch grid (bicubic, as torchvision's
    ``interpolate_embeddings``); unchanged when the grid is its own."""
    side = int(math.isqrt(pos.shape[1] - 1))
    if (gh, gw) == (side, side):
        return pos
    grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(int(gh), int(gw)), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)


class ViTBody(StepsBody):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def units(self) -> list[Unit]:
        """The tokens (patches, class token, positions), each encoder block, the final LayerNorm + class token."""
        n = cast(Any, self.net)
        tokens = _Tokens(n.conv_proj, n.class_token, n.encoder.pos_embedding, n.encoder.dropout)
        blocks = [Unit(block, (block,)) for block in n.encoder.layers]
        ln = n.encoder.ln
        return [Unit(tokens, (tokens,)), *blocks, Unit(lambda x: ln(x)[:, 0, :, None, None], (ln,))]


#: the families that run faster in the channels-last layout (1.2-1.4 times on CPU; ConvNeXt is slower in
#: it and the ViTs gain nothing: ``python -m benchmarks.bench_layout``)
CHANNELS_LAST_FAMILIES = ("resnet", "googlenet", "efficientnet", "mobilenet")


def body_of(net: nn.Module, family: str) -> nn.Module:
    """The family's feature-map network over ``net``'s modules (shared, not copied)."""
    m = cast(Any, net)
    if family == "resnet":
        return nn.Sequential(*list(net.children())[:-2])  # drop avgpool and fc
    if family == "googlenet":
        m.fc = nn.Identity()  # the classifier is unused (and stays out of the state dict and fingerprint)
        return GoogLeNetBody(net)
    if family == "vit":
        m.heads = nn.Identity()
        return ViTBody(net)
    return nn.Sequential(*m.features.children())  # convnext, efficientnet, mobilenet


def build(name: str, pretrained: Pretrained) -> Backbone:
    """torchvision's ``name`` as a :class:`Backbone`: with its default ImageNet weights (``True``: cached or
    downloaded, :mod:`plm.models.weights`), a local weights file, or random weights (``False``)."""
    from plm.models.weights import pretrained_file, torch_hub_source

    family = TORCHVISION_FAMILIES[name]
    net = network(name, pretrained=pretrained is not False)
    if pretrained is not False:
        path = pretrained_file(torch_hub_source(name, default_weights(name).url)) \
            if pretrained is True or pretrained is None else pretrained
        load_checked(net, name, path, read_weights_file(path))
    dim = feature_dim_of(net, family)  # read off the classifier, before body_of drops it
    return Backbone(body_of(net, family), dim, preprocess_of(name), name,
                    channels_last=family in CHANNELS_LAST_FAMILIES)
