"""Deferred imports, so that ``plm --help`` and the registries' names need neither torch nor numpy.

:func:`lazy_exports` makes a package import each public name from its sub-module on first use;
:class:`LazyRegistry` is a :class:`~plm.utils.registry.Registry` whose entries are named as
``"module:attribute"`` and imported when first looked up, so the list of names is known before
anything heavy is imported.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Optional, TypeVar, cast

from plm.utils.deprecation import deprecated_name
from plm.utils.registry import Registry

T = TypeVar("T")


def import_target(target: str) -> Any:
    """The object ``"package.module:attribute"`` names (imports the module)."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class _LazyPackage(types.ModuleType):
    """A package whose public names are imported from their sub-modules on first use."""

    _lazy_exports: dict[str, str]
    _deprecated: dict[str, str]

    def __getattr__(self, name: str) -> Any:
        module = self.__dict__.get("_lazy_exports", {}).get(name)
        if module is None:
            new = self.__dict__.get("_deprecated", {}).get(name)
            if new is not None:
                return deprecated_name(self.__name__, name, new)
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        types.ModuleType.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # the import system binds a loaded sub-module as an attribute of its package; where an export
        # has the name of its own sub-module (a function ``f`` defined in ``package/f.py``), the export
        # wins, as it would with an eager ``from package.f import f`` in the package
        exports = self.__dict__.get("_lazy_exports", {})
        if isinstance(value, types.ModuleType) and exports.get(name) == f"{self.__name__}.{name}":
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__dict__.get("_lazy_exports", {})))


def lazy_exports(package: str, exports: dict[str, str], deprecated: Optional[dict[str, str]] = None) -> None:
    """Make each name in ``exports`` an attribute of ``package``, imported from its module on first use.

    Call it at the end of the package's ``__init__`` (with the same names imported under
    ``if TYPE_CHECKING:`` for the type checker).

    Args:
        package: the package's ``__name__``.
        exports: public name → the sub-module that defines it (``{"knn": "plm.neighbors.exact"}``).
        deprecated: old name → its new name, for names kept one release with a ``DeprecationWarning``.
    """
    module = sys.modules[package]
    module.__class__ = _LazyPackage
    types.ModuleType.__setattr__(module, "_lazy_exports", dict(exports))
    types.ModuleType.__setattr__(module, "_deprecated", dict(deprecated or {}))


class _Deferred:
    """A registry entry not imported yet."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __repr__(self) -> str:
        return f"<deferred {self.target}>"


class LazyRegistry(Registry[T]):
    """A :class:`Registry` whose entries may be ``"module:attribute"`` targets imported on first :meth:`get`."""

    def add_lazy(self, name: str, target: str) -> None:
        """Register the object ``target`` (``"package.module:attribute"``) under ``name`` without importing it."""
        self.add(name, cast(T, _Deferred(target)))

    def get(self, name: str) -> T:
        """The entry for ``name``, imported now if it was registered with :meth:`add_lazy`."""
        entry = super().get(name)
        if isinstance(entry, _Deferred):
            entry = cast(T, import_target(entry.target))
            self._entries[name] = entry
        return entry
