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

import importlib
from typing import Any

from plm.utils.deprecation import deprecated_name

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

__all__ = sorted(_EXPORTS)

#: old spellings, kept for one release
_DEPRECATED = {"NeighbourhoodSampler": "NeighborhoodSampler"}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if name in _DEPRECATED:
            return deprecated_name(__name__, name, _DEPRECATED[name])
        raise AttributeError(f"module 'plm.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
