"""Training the last steps of a backbone on cached inputs: the prefix computes them once, the tail trains.

A backbone is a sequence of steps (:meth:`plm.models.backbones.Backbone.units`). With
``model.train_blocks = k`` the first ``len(units) − k`` steps are the frozen *prefix*: their output
map of every image is computed once (and cached on disk, like frozen mode's pooled features). The
last ``k`` steps, the pooling and the embedding head are the *tail*, trained on those maps, so a
training step costs a fraction of a full fine-tuning step. With ``k = 0`` the prefix is the whole
backbone with its pooling (frozen mode's pooled features) and the tail is the head alone.

- :class:`PrefixModel` looks like an :class:`~plm.models.EmbeddingModel` to
  :func:`plm.evaluation.embed_dataset`: its ``features`` are the prefix maps, flattened.
- :class:`TailModel` holds the whole :class:`~plm.models.EmbeddingModel` (so its state dict is the
  model's and exports as is) and runs only the tail on flattened maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from plm.models.backbones import Backbone, batch_safe
from plm.models.embedding import EmbeddingModel, ModelConfig


@dataclass
class PrefixConfig(ModelConfig):
    """A :class:`ModelConfig` plus where the prefix ends (part of the feature cache key)."""

    prefix_units: int = 0


def prefix_shape(backbone: Backbone, start: int, image_size: int) -> tuple[int, int, int]:
    """(C, H, W) of the map after the first ``start`` steps for square inputs of ``image_size``."""
    x = torch.zeros(1, 3, image_size, image_size)
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        for unit in backbone.units()[:start]:
            x = unit(x)
    backbone.train(was_training)
    return int(x.shape[1]), int(x.shape[2]), int(x.shape[3])


class PrefixModel(EmbeddingModel):
    """The first ``start`` steps of a backbone; ``features(images)`` is their output map, flattened.

    Args:
        backbone: the backbone (shared, not copied).
        config: the head-less model config of the run (pooling, image size).
        start: how many steps form the prefix (0 < start < number of steps).
    """

    def __init__(self, backbone: Backbone, config: ModelConfig, start: int):
        units = backbone.units()
        if not 0 < start < len(units):
            raise ValueError(f"the prefix must end inside the backbone's {len(units)} steps; got {start}")
        super().__init__(backbone, PrefixConfig(**{**config.to_dict(), "embed_dim": None}, prefix_units=start))
        self.start = start
        self.map_shape = prefix_shape(backbone, start, self.preprocess.input_size)

    @property
    def feature_dim(self) -> int:
        c, h, w = self.map_shape
        return c * h * w

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return batch_safe(self._prefix, self.backbone.layout(x)).flatten(1)

    def _prefix(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.backbone.units()[:self.start]:
            x = unit(x)
        return x


class TailModel(nn.Module):
    """The steps of ``model``'s backbone from ``start`` on, its pooling and its head, on flattened prefix maps.

    Only the tail's parameters (steps from ``start``, the head) are left trainable by
    :meth:`trainable_`; the module's state dict is ``model``'s, under ``model.``.
    """

    def __init__(self, model: EmbeddingModel, start: int, map_shape: tuple[int, int, int]):
        super().__init__()
        self.model = model
        self.start = start
        self.map_shape = map_shape

    def trainable_(self) -> TailModel:
        """Freeze the whole model, then unfreeze the tail's steps and the head (BatchNorm affine
        weights stay frozen when ``freeze_bn`` is applied afterwards)."""
        self.model.requires_grad_(False)
        for unit in self.model.backbone.units()[self.start:]:
            for p in unit.parameters():
                p.requires_grad_(True)
        self.model.head.requires_grad_(True)
        return self

    def pooled(self, maps: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (the model's pooling) of flattened prefix maps."""
        return self.model.pool(batch_safe(self._tail, self.model.backbone.layout(
            maps.reshape(maps.shape[0], *self.map_shape))))

    def _tail(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.model.backbone.units()[self.start:]:
            x = unit(x)
        return x

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.pooled(maps))
