"""timm's models as plm backbones: ``--backbone timm:NAME`` (``timm:convnext_tiny.fb_in22k_ft_in1k`` …).

Needs timm (``pip install 'plm[timm]'``). The model is built without its classifier; its feature is
timm's own pooled one (``forward_head(..., pre_logits=True)``: the class token for ViTs, average pooling
for CNNs, whatever the model does), given as a (C, 1, 1) map. Preprocessing is timm's data config of
the model (input size, crop ratio, mean, std, interpolation). Pretrained weights come from a local file
(``--weights FILE``: the repository's ``model.safetensors`` or ``pytorch_model.bin``, read by timm with
``weights_only`` or as safetensors), else the Hugging Face hub cache, else a download into it when online
(:mod:`plm.models.weights`). timm backbones are not cut into steps: ``Backbone.units`` raises, naming
the backbone, so ``model.train_blocks`` needs another one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plm.models.backbones import TIMM_PREFIX, Backbone, Pretrained
from plm.models.preprocess import PreprocessConfig


def timm_module() -> Any:
    """The timm package, imported after plm's torchvision shim (timm imports torchvision).

    Raises:
        ValueError: timm is not installed.
    """
    from plm._compat import import_torchvision

    import_torchvision()
    try:
        import timm
    except ImportError as err:
        raise ValueError("timm backbones need timm: pip install 'plm[timm]' (or timm)") from err
    return timm


def canonical_timm(name: str, what: str = "backbone") -> str:
    """``timm:NAME`` in lower case, when timm knows the architecture of NAME (its part before any ``.tag``).

    Raises:
        ValueError: timm is not installed, or has no such model.
    """
    import difflib

    timm = timm_module()
    model = name[len(TIMM_PREFIX):].strip().lower()
    arch = model.split(".", 1)[0]
    if not model or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=1)
        hint = f" (did you mean 'timm:{close[0]}'?)" if close else ""
        raise ValueError(f"unknown {what} {name!r}: timm has no model {arch!r}{hint}; timm.list_models() lists them")
    return TIMM_PREFIX + model


class _TimmBody(nn.Module):
    """A timm model without its classifier: its pooled feature as a (B, C, 1, 1) map."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, :, None, None]


def _preprocess(timm: Any, net: nn.Module) -> PreprocessConfig:
    cfg = timm.data.resolve_data_config({}, model=net)
    size = int(cfg["input_size"][-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    interpolation = cfg.get("interpolation", "bilinear")
    mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    return PreprocessConfig(input_size=size, resize_size=int(math.floor(size / crop_pct)), mean=mean,  # type: ignore[arg-type]
                            std=std,  # type: ignore[arg-type]
                            interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bilinear")


def _source(name: str, net: nn.Module) -> Any:
    """Where the published weights of ``name`` live (its Hugging Face repository, else its URL)."""
    from plm.models.weights import hf_source, torch_hub_source

    cfg = getattr(net, "pretrained_cfg", {}) or {}
    if cfg.get("hf_hub_id"):
        return hf_source(name, cfg["hf_hub_id"], cfg.get("hf_hub_filename") or "model.safetensors")
    if cfg.get("url"):
        return torch_hub_source(name, cfg["url"])
    from plm.errors import NoPretrainedWeightsError

    raise NoPretrainedWeightsError(f"timm publishes no pretrained weights for {name}; pass pretrained=PATH or "
                                   f"pretrained=False", name, "timm publishes none", "a weights file of your own")


def build(name: str, pretrained: Pretrained) -> Backbone:
    """The timm model ``name`` (``timm:ARCH[.TAG]``) as a :class:`Backbone`.

    Raises:
        ValueError: timm missing, unknown model, or a weights file that does not fit.
        NoPretrainedWeightsError: pretrained weights asked for, neither cached nor downloadable.
    """
    from plm.models.weights import pretrained_file

    timm = timm_module()
    model = name[len(TIMM_PREFIX):]
    net = timm.create_model(model, pretrained=False, num_classes=0)
    if pretrained is not False:
        path = Path(pretrained_file(_source(name, net)) if pretrained is True or pretrained is None
                    else os.fspath(pretrained))
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        try:  # timm's own loader: safetensors, or torch.load(weights_only=True); its key filters
            net = timm.create_model(model, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)})
        except (RuntimeError, KeyError, ValueError) as err:
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise ValueError(f"weights file {path} does not fit backbone {name} ({first}); give that model's "
                             f"weights (model.safetensors or pytorch_model.bin of its timm repository)") from None
    dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
    return Backbone(_TimmBody(net), dim, _preprocess(timm, net), name)
