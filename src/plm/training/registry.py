"""The training methods by name: ``plm``, ``stml``, ``kmeans``.

The names are read without importing torch (``plm train --help``, config validation); each
builder ``(config, embed_dim) -> Method`` is imported from :mod:`plm.training.methods` on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from plm.utils.lazy import LazyRegistry

if TYPE_CHECKING:
    from plm.training.config import TrainConfig
    from plm.training.methods import Method

#: name → builder; ``plm train --method``, the config's validation and the demo read the names from here
METHODS: LazyRegistry[Callable[[TrainConfig, int], Method]] = LazyRegistry("method")
for _name in ("plm", "stml", "kmeans"):
    METHODS.add_lazy(_name, f"plm.training.methods:build_{_name}_method")
