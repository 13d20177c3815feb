"""Training: ``plm train`` and its importable building blocks.

- :func:`train` / :class:`Trainer` – the loop (frozen or finetune mode, single process or DDP),
  :mod:`plm.training.trainer`; what it returns, :class:`TrainResult` (:mod:`plm.training.result`);
- :class:`TrainConfig`, :func:`default_config`, :func:`resolve_config` – configuration
  (:mod:`plm.training.config`); what a training set can support, :mod:`plm.training.sizing`;
- :mod:`plm.training.methods` – ``plm``, ``stml``, ``kmeans``, one module each with its config section,
  checks and sizing hook (named by :data:`METHODS`, :mod:`plm.training.registry`): target similarities and losses;
- :mod:`plm.training.selection` – validation against the pretrained features, the best epoch, the
  verdict, the final test and ``summary.json``;
- :mod:`plm.training.pipeline` (frozen and finetune data paths), :class:`EMATeacher`,
  :class:`NeighborhoodSampler` (and the k-NN table it samples from) – networks and batches;
- :mod:`plm.training.checkpoint` (checkpoints, RNG states, resuming), :mod:`plm.training.history`
  (``metrics.csv``, TensorBoard, an epoch's running means), :mod:`plm.training.distributed`,
  :mod:`plm.training.optim` (AdamW, schedule, float16 loss scaling);
- the losses themselves (and :class:`ProxyBank`) are :mod:`plm.losses`.

Names are imported on first use, so ``from plm.training import TrainConfig`` does not load the
trainer, the pipelines or the datasets' heavy dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plm.utils.lazy import lazy_exports

if TYPE_CHECKING:  # imported on first use: ``from plm.training import TrainConfig`` loads no trainer
    from plm.losses.proxies import ProxyBank
    from plm.training.config import ConfigError, TrainConfig, default_config, resolve_config, valid_keys
    from plm.training.ema import EMATeacher
    from plm.training.methods import (
        BatchView,
        KMeansConfig,
        KMeansMethod,
        Method,
        PLMMethod,
        STMLConfig,
        STMLMethod,
        build_method,
    )
    from plm.training.registry import METHODS
    from plm.training.result import TrainResult
    from plm.training.sampler import NeighborhoodSampler
    from plm.training.trainer import Trainer, train

#: public name → the module that defines it
_EXPORTS = {
    "ConfigError": "plm.training.config", "TrainConfig": "plm.training.config",
    "default_config": "plm.training.config", "resolve_config": "plm.training.config",
    "valid_keys": "plm.training.config",
    "EMATeacher": "plm.training.ema",
    "METHODS": "plm.training.registry", "BatchView": "plm.training.methods", "KMeansMethod": "plm.training.methods",
    "Method": "plm.training.methods", "PLMMethod": "plm.training.methods", "STMLMethod": "plm.training.methods",
    "build_method": "plm.training.methods", "STMLConfig": "plm.training.methods",
    "KMeansConfig": "plm.training.methods",
    "ProxyBank": "plm.losses.proxies",
    "NeighborhoodSampler": "plm.training.sampler",
    "Trainer": "plm.training.trainer", "TrainResult": "plm.training.result", "train": "plm.training.trainer",
}

__all__ = ["BatchView", "ConfigError", "EMATeacher", "KMeansConfig", "KMeansMethod", "METHODS", "Method",
           "NeighborhoodSampler", "PLMMethod", "ProxyBank", "STMLConfig", "STMLMethod", "TrainConfig", "TrainResult",
           "Trainer", "build_method", "default_config", "resolve_config", "train", "valid_keys"]

#: old spellings, kept for one release
_DEPRECATED = {"NeighbourhoodSampler": "NeighborhoodSampler"}

lazy_exports(__name__, _EXPORTS, deprecated=_DEPRECATED)
