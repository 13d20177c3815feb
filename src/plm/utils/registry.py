"""One pattern for named choices: methods, datasets, backbones, estimators.

A :class:`Registry` maps a name to a factory. The CLI's ``choices``, the config's validation and
the demo all read the same registry, so adding an entry is one decorator (or one ``add`` call)::

    METHODS = Registry("method")

    @METHODS.register("plm")
    def _build_plm(config): ...

    METHODS.get("plm")(config)      # unknown names raise with a did-you-mean hint
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownChoiceError(ValueError):
    """A name that no registry entry has (the message lists the choices)."""


class Registry(Generic[T]):
    """An ordered name → entry mapping with a readable error for unknown names.

    Args:
        kind: what the entries are, for messages ("method", "dataset", …).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name`` (a duplicate name is an error) and return it."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        def decorate(entry: T) -> T:
            return self.add(name, entry)
        return decorate

    def get(self, name: str) -> T:
        """The entry for ``name``; raises :class:`UnknownChoiceError` with a did-you-mean hint."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownChoiceError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """``unknown method 'plmm'; did you mean 'plm'? (choose one of plm, stml, kmeans)``."""
        close = difflib.get_close_matches(str(name), list(self._entries), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (choose one of {', '.join(self._entries)})"

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order (use these as CLI ``choices``)."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
