"""Methods: what target similarity the teacher gives a batch, and which loss the student gets.

One module per method, each holding its class, its config section, its checks and its sizing hook
(:mod:`plm.training.methods.base` says what a method is):

- :mod:`~plm.training.methods.plm` – :class:`PLMMethod`, the paper's method (sections ``manifold``,
  ``loss``, ``proxies``, ``similarity``);
- :mod:`~plm.training.methods.stml` – :class:`STMLMethod` and :class:`STMLConfig` (section ``stml``);
- :mod:`~plm.training.methods.kmeans` – :class:`KMeansMethod` and :class:`KMeansConfig` (section ``kmeans``).

:data:`METHODS` (:mod:`plm.training.registry`, torch-free) names them; :func:`build_method` builds the
one a config names.
"""

from __future__ import annotations

from typing import Any

from plm.losses import binary_piece_similarity
from plm.training.methods.base import BatchView, Method
from plm.training.methods.kmeans import KMeansConfig, KMeansMethod
from plm.training.methods.plm import PLMMethod
from plm.training.methods.stml import STMLConfig, STMLMethod
from plm.training.registry import METHODS

__all__ = ["METHODS", "BatchView", "KMeansConfig", "KMeansMethod", "Method", "PLMMethod", "STMLConfig",
           "STMLMethod", "binary_piece_similarity", "build_method", "method_class"]


def method_class(name: str) -> type[Method]:
    """The :class:`Method` subclass registered as ``name`` (see :data:`METHODS`)."""
    return METHODS.get(name)


def build_method(config: Any, embed_dim: int) -> Method:
    """The method a :class:`~plm.training.config.TrainConfig` names, built from its own section."""
    return method_class(config.method).from_config(config, embed_dim)
