"""Which ``Host`` and ``Origin`` headers ``plm serve`` answers (against DNS rebinding and cross-site posts)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

__all__ = ["HostPolicy"]


@dataclass(frozen=True)
class HostPolicy:
    """Which ``Host`` and ``Origin`` values the server answers (against DNS rebinding and cross-site posts).

    Args:
        names: the host names accepted, lower case, IPv6 addresses in brackets.
        port: the port the server listens on.
        any_ip: also accept any IP address (the server is bound to all interfaces); an address
            cannot be rebound by DNS, so this stays safe.
    """

    names: frozenset[str]
    port: int
    any_ip: bool = False

    @classmethod
    def for_bind(cls, host: str, port: int, extra: Iterable[str] = ()) -> HostPolicy:
        """The policy of a server bound to ``host``:``port``, with ``extra`` host names allowed too."""
        names = {"127.0.0.1", "localhost", "[::1]"}
        for name in (host, *extra):
            name = name.strip().lower().rstrip(".")
            if name:
                names.add(f"[{name}]" if ":" in name and not name.startswith("[") else name)
        return cls(frozenset(names), int(port), host.strip() in ("", "0.0.0.0", "::", "[::]"))

    def _name_ok(self, name: str) -> bool:
        if name in self.names:
            return True
        if not self.any_ip:
            return False
        try:
            ipaddress.ip_address(name[1:-1] if name.startswith("[") and name.endswith("]") else name)
        except ValueError:
            return False
        return True

    def allows_host(self, header: Optional[str]) -> bool:
        """Whether a ``Host`` header value names this server (``name:port``; no port means 80)."""
        if not header or len(header) > 300:
            return False
        header = header.strip().lower()
        found = re.fullmatch(r"(\[[0-9a-f:.]+\]|[^:\[\]]+?)\.?(?::([0-9]{1,5}))?", header)
        if found is None:
            return False
        port = int(found.group(2)) if found.group(2) else 80
        return port == self.port and self._name_ok(found.group(1))

    def allows_origin(self, origin: str) -> bool:
        """Whether an ``Origin`` header value is this server's own (``http://`` + an allowed host)."""
        parts = urlsplit(origin.strip())
        return parts.scheme == "http" and not parts.path and self.allows_host(parts.netloc)

    def describe(self) -> str:
        """The accepted hosts, for messages."""
        names = sorted(self.names) + (["any IP address"] if self.any_ip else [])
        return ", ".join(f"{n}:{self.port}" for n in names)
