"""The training methods by name: ``plm``, ``stml``, ``kmeans``.

The names are read without importing torch (``plm train --help``, the demo's presets); each entry is
a :class:`plm.training.methods.Method` subclass, imported from its module on first use. A leaf: it
imports nothing of :mod:`plm.training`.
"""

from __future__ import annotations

from typing import Any

from plm.utils.lazy import LazyRegistry

#: name → :class:`~plm.training.methods.Method` subclass; ``plm train --method``, the config's validation
#: and the demo read the names from here
METHODS: LazyRegistry[Any] = LazyRegistry("method")
METHODS.add_lazy("plm", "plm.training.methods.plm:PLMMethod")
METHODS.add_lazy("stml", "plm.training.methods.stml:STMLMethod")
METHODS.add_lazy("kmeans", "plm.training.methods.kmeans:KMeansMethod")
