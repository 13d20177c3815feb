"""Deprecated location of :class:`plm.losses.ProxyBank` (kept so old imports work)."""

from plm.losses.proxies import ProxyBank

__all__ = ["ProxyBank"]
