"""The paper's method: the PL target and L_point + L_proxy + L_neighbourhood (:class:`plm.losses.PLMLoss`).

Its ablations are options: ``proxies.num=0``, ``manifold.subset_selection=false``,
``similarity=binary``. Its config sections are the library's own (``manifold``, ``loss``,
``proxies``, ``similarity``: :class:`plm.losses.PLMConfig`).
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from plm.losses import PLMConfig, PLMLoss, ProxyBank
from plm.training.methods.base import BatchView, Method, cap_per_group
from plm.utils.config import check

__all__ = ["PLMMethod"]


class PLMMethod(Method):
    """The paper's method: :class:`plm.losses.PLMLoss` (PL target, L_point + L_proxy + L_neighbourhood)
    on this process's rows of the global batch.

    All the math is :class:`~plm.losses.PLMLoss` (attribute :attr:`loss`); this class only maps the
    trainer's hooks and :class:`BatchView` onto it.

    Args:
        embed_dim: d.
        config: manifold, loss and proxy options; the defaults are ``plm train``'s.
        num_proxies: overrides ``config.proxies.num`` (0 = the "no proxies" ablation).
        seed: seed of the proxy initialisation.
    """

    name = "plm"

    def __init__(self, embed_dim: int, config: Optional[PLMConfig] = None, *, num_proxies: Optional[int] = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.loss = PLMLoss(config, embed_dim=embed_dim, num_proxies=num_proxies, seed=seed)

    @property
    def config(self) -> PLMConfig:
        """The options of :attr:`loss`."""
        return self.loss.config

    @property
    def proxies(self) -> Optional[ProxyBank]:
        """The learnable proxies (``None`` without proxies)."""
        return self.loss.proxies

    def prepare(self, train_embeddings: Tensor) -> None:
        self.loss.init_proxies(train_embeddings)

    def proxy_locations(self) -> Tensor:
        """(K, d) ρ_k as the losses see them (on the unit sphere with ``proxies.on_sphere``)."""
        return self.loss.proxy_locations()

    def target_similarity(self, teacher: Tensor, indices: Optional[Tensor] = None) -> Tensor:
        return self.loss.target_similarity(teacher)

    def forward(self, batch: BatchView) -> dict[str, Tensor]:
        return self.loss.terms(batch.student, batch.teacher_all, student_all=batch.student_all, rows=batch.rows)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # checkpoints written before plm.losses kept the proxies at "proxies.*" instead of "loss.proxies.*"
        for key in [k for k in state_dict if k.startswith(prefix + "proxies.")]:
            state_dict[prefix + "loss." + key[len(prefix):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def section(cls, config: Any) -> PLMConfig:
        """The method's own options in a training config."""
        return PLMConfig(manifold=config.manifold, loss=config.loss, proxies=config.proxies,
                         similarity=config.similarity)

    @classmethod
    def from_config(cls, config: Any, embed_dim: int) -> PLMMethod:
        return cls(embed_dim, cls.section(config), seed=config.seed)

    @classmethod
    def check_config(cls, config: Any) -> None:
        """``manifold.group_size`` restricts the PL candidates to a batch's seed groups: null or ``sampler.k``."""
        check(config.manifold.group_size in (None, config.sampler.k),
              f"manifold.group_size restricts the PL candidates to a batch's seed groups, so it must be null or "
              f"sampler.k; got manifold.group_size={config.manifold.group_size!r} with sampler.k={config.sampler.k} "
              f"(set manifold.group_size={config.sampler.k} or manifold.group_size=null)")

    @classmethod
    def fit_to_data(cls, config: Any, num_train: int) -> tuple[dict[str, Any], list[str]]:
        """At most one proxy per ``sampler.k`` training images (one neighbourhood group)."""
        return cap_per_group("proxies.num", config.proxies.num, num_train, config.sampler.k, 1, "proxy")
