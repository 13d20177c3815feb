"""Training: ``plm train`` and its importable building blocks.

- :func:`train` / :class:`Trainer` – the loop (frozen or finetune mode, single process or DDP);
- :class:`TrainConfig`, :func:`default_config`, :func:`resolve_config` – configuration;
- :class:`EMATeacher`, :class:`NeighbourhoodSampler`, :class:`ProxyBank` – networks and batches;
- :mod:`plm.training.losses` – L_point, L_proxy, L_neighbourhood, (relaxed) contrastive;
- :mod:`plm.training.methods` – ``plm``, ``stml``, ``kmeans`` target similarities and losses.
"""

from plm.training.config import ConfigError, TrainConfig, default_config, resolve_config, valid_keys
from plm.training.ema import EMATeacher
from plm.training.methods import BatchView, KMeansMethod, Method, PLMMethod, STMLMethod, build_method
from plm.training.proxies import ProxyBank
from plm.training.sampler import NeighbourhoodSampler
from plm.training.trainer import Trainer, TrainResult, train

__all__ = [
    "BatchView", "ConfigError", "EMATeacher", "KMeansMethod", "Method", "NeighbourhoodSampler", "PLMMethod",
    "ProxyBank", "STMLMethod", "TrainConfig", "TrainResult", "Trainer", "build_method", "default_config",
    "resolve_config", "train", "valid_keys",
]
