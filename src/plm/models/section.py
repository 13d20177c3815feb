"""The ``model`` section of ``plm train``'s config (turned into a :class:`plm.models.ModelConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from plm.models.embedding import POOLINGS
from plm.utils.config import ConfigError, check_choice, check_positive

HEAD_INITS = ("pca", "pca_uncentered", "orthogonal")


@dataclass
class ModelSection:
    """The embedding network (see :class:`plm.models.ModelConfig`).

    Attributes:
        backbone: registered backbone name (``efficientnet_lite0``, ``googlenet``, ``resnet50``).
        backbone_weights: local ImageNet weights file for backbones that ship without weights.
        embed_dim: output dimension of the linear embedding layer; ``None`` = the backbone's
            feature width (with ``pca_uncentered`` the head then starts as a rotation of the
            pretrained features).
        pooling: ``avg`` or ``avg+max`` (GAP + GMP).
        image_size: input resolution; ``None`` = the backbone's own.
        freeze_bn: keep BatchNorm layers in eval mode with frozen affine weights (finetune mode).
        head_init: ``pca`` (the linear layer starts as the centred projection onto the top
            ``embed_dim`` principal directions of the training images' pretrained features; no
            labels), ``pca_uncentered`` (the top directions of the uncentred second moment, zero
            bias: at ``embed_dim`` = the feature width a rotation, so the untrained model ranks as the
            pretrained features do) or ``orthogonal`` (random orthogonal weights, zero bias).
        train_blocks: frozen mode: how many of the backbone's last steps (its head convolution,
            then its blocks from the last one back) train with the head, on cached outputs of the
            steps before them (:mod:`plm.models.partial`); 0 trains the head alone.
    """

    backbone: str = "efficientnet_lite0"
    backbone_weights: Optional[str] = None
    embed_dim: Optional[int] = None
    pooling: str = "avg+max"
    image_size: Optional[int] = None
    freeze_bn: bool = True
    head_init: str = "pca_uncentered"
    train_blocks: int = 0

    def __post_init__(self) -> None:
        check_positive("model.train_blocks", self.train_blocks, allow_zero=True)
        from plm.models.backbones import canonical_backbone, check_image_size

        check_positive("model.embed_dim", self.embed_dim, allow_none=True)
        check_choice("model.pooling", self.pooling, POOLINGS)
        check_choice("model.head_init", self.head_init, HEAD_INITS)
        try:
            canonical_backbone(self.backbone, "model.backbone")
            check_image_size(self.backbone, self.image_size, "model.image_size")
        except ValueError as err:
            raise ConfigError(str(err)) from None
