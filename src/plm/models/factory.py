"""The one model factory: a backbone name (with its published or a local weights file) or a plm checkpoint.

The CLI (``--backbone``/``--checkpoint``, ``--weights``, ``--image-size``), the search identity
(:func:`plm.search.identity.model_from_identity`) and the training pipeline build their models here,
so the rules (and the error for a backbone whose weights are neither here nor downloadable) are
written once.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Optional, Union

from plm.errors import NoPretrainedWeightsError, UserError
from plm.models.embedding import EmbeddingModel, ModelConfig, create_model, load_model

PathLike = Union[str, "os.PathLike[str]"]


def build_embedder(backbone: Union[str, ModelConfig, None] = None, checkpoint: Optional[PathLike] = None,
                   weights: Optional[PathLike] = None, image_size: Optional[int] = None,
                   weights_hint: str = "pass --weights FILE") -> EmbeddingModel:
    """The embedding model a backbone or a checkpoint names.

    Args:
        backbone: a backbone name (pooled features, L2-normalised, no head) or a full
            :class:`~plm.models.ModelConfig`; exclusive with ``checkpoint``.
        checkpoint: a plm checkpoint (``plm train`` output).
        weights: a local ImageNet weights file for the backbone (default: its published weights,
            shipped with plm, cached, or downloaded when online; :mod:`plm.models.weights`).
        image_size: input resolution instead of the model's own.
        weights_hint: how the caller's user gives a weights file, for the error message.

    Raises:
        UserError: no weights file was given and the backbone's weights are neither here nor downloadable.
        ValueError: neither or both of ``backbone`` and ``checkpoint``, an unknown backbone, a bad
            image size or weights file.
    """
    if (backbone is None) == (checkpoint is None):
        raise ValueError("give exactly one of backbone= or checkpoint=")
    if checkpoint is not None:
        from plm.models.backbones import check_image_size

        model = load_model(checkpoint)
        if image_size is not None:
            check_image_size(model.config.backbone, image_size, "--image-size")
            model.config.image_size = image_size
        return model
    assert backbone is not None
    if isinstance(backbone, ModelConfig):
        config = backbone if image_size is None else replace(backbone, image_size=image_size)
    else:
        config = ModelConfig(backbone=backbone, embed_dim=None, pooling="avg", normalize=True, image_size=image_size)
    try:
        return create_model(config, pretrained=weights if weights else True)
    except NoPretrainedWeightsError as err:
        cache = f", {err.cache_hint}" if err.cache_hint else ""
        raise UserError(f"no pretrained weights for {config.backbone} here ({err.reason}): {weights_hint} "
                        f"({err.file_hint}){cache}") from err
