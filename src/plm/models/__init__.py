"""Backbones, preprocessing and the embedding model."""

from plm.models.backbones import BACKBONES, Backbone, create_backbone, list_backbones, load_state_dict_file
from plm.models.embedding import (
    EmbeddingHead,
    EmbeddingModel,
    ModelConfig,
    create_model,
    load_model,
    save_model,
)
from plm.models.factory import build_embedder
from plm.models.preprocess import PreprocessConfig, build_transform

__all__ = [
    "BACKBONES",
    "Backbone",
    "EmbeddingHead",
    "EmbeddingModel",
    "ModelConfig",
    "PreprocessConfig",
    "build_embedder",
    "build_transform",
    "create_backbone",
    "create_model",
    "list_backbones",
    "load_model",
    "load_state_dict_file",
    "save_model",
]
