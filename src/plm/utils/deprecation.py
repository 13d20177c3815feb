"""Old public names kept for one release: each resolves to its new name with a ``DeprecationWarning``.

A module lists its old names once, ``__getattr__ = deprecated_names(__name__, {"old": "new"})``,
under ``if not TYPE_CHECKING:`` so that the type checker still rejects names a module does not
define; :func:`plm.utils.lazy.lazy_exports` takes the same mapping for lazily imported packages.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any


def deprecated_name(module: str, old: str, new: str, stacklevel: int = 3) -> Any:
    """Warn that ``module.old`` is deprecated and return ``module.new``."""
    warnings.warn(f"{module}.{old} is deprecated and will be removed in the next release; use {module}.{new}",
                  DeprecationWarning, stacklevel=stacklevel)
    return getattr(sys.modules[module], new)


def deprecated_names(module: str, aliases: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` that resolves each old name in ``aliases`` to its new name, warning."""

    def __getattr__(name: str) -> Any:
        new = aliases.get(name)
        if new is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        return deprecated_name(module, name, new)

    return __getattr__
