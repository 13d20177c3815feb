"""Options of the PLM loss: its terms (:class:`LossConfig`), its proxies (:class:`ProxyConfig`) and both
with the manifold options (:class:`PLMConfig`).

These dataclasses are the ``loss`` and ``proxies`` sections of ``plm train``'s config, so their
defaults are the library's and the command line's alike (one source of truth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from plm.manifold.config import ManifoldConfig
from plm.utils.choices import CONTEXT_MODES
from plm.utils.config import check, check_choice, check_int, check_positive

PLM_LOSSES = ("regression", "weighted_regression", "relaxed_contrastive")
PROXY_INITS = ("kmeans", "random")
PROXY_UPDATES = ("all", "neighbourhood")
SIMILARITIES = ("continuous", "binary")


@dataclass
class ProxyConfig:
    """Learnable proxy pieces (docs/method.md §5).

    Attributes:
        num: N_ρ; ``0`` disables proxies (and L_proxy, L_neighbourhood).
        init: ``kmeans`` (centres of the pretrained training embeddings) or ``random`` (samples).
        local_points: nearest points per centre for the local PCA giving the initial basis.
        on_sphere: proxies live on the unit sphere with the embeddings.
        update: ``all`` (L_proxy and L_neighbourhood move the proxies) or ``neighbourhood``.
    """

    num: int = 100
    init: str = "kmeans"
    local_points: int = 20
    on_sphere: bool = True
    update: str = "all"

    def __post_init__(self) -> None:
        check_positive("proxies.num", self.num, allow_zero=True)
        check_choice("proxies.init", self.init, PROXY_INITS)
        check_choice("proxies.update", self.update, PROXY_UPDATES)
        check_positive("proxies.local_points", self.local_points)


@dataclass
class LossConfig:
    """PLM losses: weights, δ, the point loss's kind and the neighbourhood term's n, λ and radius.

    Attributes:
        delta: δ of L_point and L_proxy (the distance of a pair with similarity 0).
        point: weight of the point-pair term.
        proxy: weight of L_proxy.
        neighbourhood: weight of L_neighbourhood.
        neighbourhood_points: n, points per proxy in L_neighbourhood.
        neighbourhood_lambda: λ in L_neighbourhood.
        kind: ``regression`` (distances regress onto δ(1 − s)), ``weighted_regression`` (the same with
            per-pair weights that give each row's similar and dissimilar pairs equal total weight) or
            ``relaxed_contrastive`` (PL similarity as STML-style soft weights, margin ``margin``).
        margin: δ of the relaxed contrastive loss.
        neighbourhood_radius: L_neighbourhood counts only points within this distance of a proxy.
        expansion: k of the neighbourhood expansion of the point terms' target: each point's row of
            the PL similarity is averaged over its k nearest batch points (itself included,
            :func:`plm.manifold.expansion.expanded_similarity`); 0 or 1 = the PL similarity as is.
            Off by default although k = 5 wins the written rule on three benchmarks: its neighbours are
            ranked over the whole batch, so near-ties flip with the last bits of the embeddings and a
            2-process run no longer ends where a 1-process run does (docs/results.md).
        context: weight c of STML's contextual similarity W_C in the point terms' target, W_C the
            k-reciprocal contextual similarity of the batch whose neighbours are ranked by the PL
            similarity s itself (k = ``context_k``; :func:`plm.estimators.stml.contextual_target`);
            0 = the PL similarity alone. Default 0.25 with ``context_mode`` raise,
            chosen on the validation classes of three benchmarks (docs/results.md, "The contextual
            PL target").
        context_k: k of the contextual similarity (the point included).
        context_mode: ``raise`` (default): s̃ = s + c max(W_C(s) − s, 0), the contextual similarity
            only ever raising a pair's PL similarity; ``mix``: s̃ = (1 − c) s + c W_C(s).
    """

    delta: float = 1.5
    point: float = 1.0
    proxy: float = 0.1
    neighbourhood: float = 0.1
    neighbourhood_points: int = 4
    neighbourhood_lambda: float = 0.5
    kind: str = "relaxed_contrastive"
    margin: float = 1.0
    neighbourhood_radius: Optional[float] = None
    expansion: int = 0
    context: float = 0.25
    context_k: int = 5
    context_mode: str = "raise"

    def __post_init__(self) -> None:
        check_positive("loss.delta", self.delta)
        check_choice("loss.kind", self.kind, PLM_LOSSES)
        check_positive("loss.margin", self.margin)
        check_positive("loss.neighbourhood_radius", self.neighbourhood_radius, allow_none=True)
        for name in ("point", "proxy", "neighbourhood", "neighbourhood_lambda"):
            check_positive(f"loss.{name}", getattr(self, name), allow_zero=True)
        check_positive("loss.neighbourhood_points", self.neighbourhood_points)
        check_int("loss.expansion", self.expansion, 0, 4096)
        check_positive("loss.context", self.context, allow_zero=True)
        check(self.context <= 1, f"loss.context is a weight in [0, 1]; got {self.context}")
        check_int("loss.context_k", self.context_k, 1, 4096)
        check_choice("loss.context_mode", self.context_mode, CONTEXT_MODES)


@dataclass
class PLMConfig:
    """Everything :class:`plm.losses.PLMLoss` needs: the target similarity and the loss terms.

    Attributes:
        manifold: the PL model that turns teacher embeddings into the target similarity.
        loss: the loss terms.
        proxies: the learnable proxy pieces.
        similarity: ``continuous`` PL similarity or the ``binary`` same-piece ablation.
    """

    manifold: ManifoldConfig = field(default_factory=ManifoldConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    proxies: ProxyConfig = field(default_factory=ProxyConfig)
    similarity: str = "continuous"

    def __post_init__(self) -> None:
        check_choice("similarity", self.similarity, SIMILARITIES)
