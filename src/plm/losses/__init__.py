"""Losses on soft target similarities, usable in any PyTorch training loop (no ``plm.training`` needed).

- :class:`PLMLoss` – the whole PLM loss: PL target from teacher embeddings, point and proxy terms;
- :class:`PointLoss`, :class:`RelaxedContrastiveLoss`, :class:`ContrastiveLoss`, :class:`ProxyLoss`,
  :class:`NeighborhoodLoss` – single terms, called as ``loss_fn(embeddings, target, ref_emb=None)``;
- :mod:`plm.losses.functional` – the same math as functions; :class:`~plm.losses.functional.Rows` places one
  process's rows in a distributed batch;
- :class:`LossConfig`, :class:`ProxyConfig`, :class:`PLMConfig` – options (``plm train``'s defaults);
- :class:`ProxyBank` – the learnable proxy pieces.

See docs/api.md for an example loop.
"""

from plm.losses.config import PLM_LOSSES, PROXY_INITS, PROXY_UPDATES, LossConfig, PLMConfig, ProxyConfig
from plm.losses.modules import ContrastiveLoss, NeighborhoodLoss, PointLoss, ProxyLoss, RelaxedContrastiveLoss
from plm.losses.plm_loss import PLMLoss, ProxiesNotInitializedError, binary_piece_similarity
from plm.losses.proxies import ProxyBank

__all__ = [
    "PLM_LOSSES", "PROXY_INITS", "PROXY_UPDATES", "ContrastiveLoss", "LossConfig", "NeighborhoodLoss", "PLMConfig",
    "PLMLoss", "PointLoss", "ProxiesNotInitializedError", "ProxyBank", "ProxyConfig", "ProxyLoss",
    "RelaxedContrastiveLoss", "binary_piece_similarity",
]
