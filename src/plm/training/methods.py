"""Methods: what target similarity the teacher gives a batch, and which loss the student gets.

A method is a config choice, not a copy of the training loop. Each is an ``nn.Module`` (its
learnable parameters, e.g. proxies, and its state, e.g. pseudo-labels, are checkpointed with it)
with three hooks:

- :meth:`Method.prepare` once, with the pretrained teacher embeddings of the training set;
- :meth:`Method.on_epoch_start` every epoch, with the current teacher's training embeddings;
- :meth:`Method.forward` every step, with a :class:`BatchView`, returning the loss terms.

``plm`` is the paper's method (its ablations are options: ``proxies.num=0``,
``manifold.subset_selection=false``, ``similarity=binary``); ``stml`` and ``kmeans`` are peers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plm.training.config import PLM_LOSSES, PROXY_UPDATES
from plm.training.losses import (
    balanced_pair_weights,
    contrastive_loss,
    neighbourhood_loss,
    point_loss,
    proxy_contrastive_loss,
    proxy_loss,
    relaxed_contrastive_loss,
)
from plm.training.proxies import ProxyBank


@dataclass
class BatchView:
    """One step's batch as a method sees it (global = the batch over all processes).

    Attributes:
        student: (R, d) student embeddings of this process's rows (with gradient).
        student_all: (B, d) student embeddings of the global batch (gradient flows to every rank).
        teacher_all: (B, d) teacher embeddings of the global batch (no gradient).
        indices_all: (B,) training-set positions of the global batch.
        row_start: global index of this process's first row.
        world_size: number of processes.
    """

    student: Tensor
    student_all: Tensor
    teacher_all: Tensor
    indices_all: Tensor
    row_start: int = 0
    world_size: int = 1

    @property
    def rows(self) -> slice:
        """This process's rows within the global batch."""
        return slice(self.row_start, self.row_start + self.student.shape[0])

    @property
    def num_pairs(self) -> int:
        """B·(B−1), the ordered pairs i ≠ j of the global batch."""
        b = self.student_all.shape[0]
        return b * (b - 1)


class Method(nn.Module):
    """Base class: override :meth:`target_similarity` and :meth:`forward`."""

    name = "method"

    def prepare(self, train_embeddings: Tensor) -> None:
        """Called once before training with the pretrained teacher's training embeddings (N, d)."""

    def on_epoch_start(self, train_embeddings: Tensor, epoch: int) -> None:
        """Called at the start of every epoch with the current teacher's training embeddings."""

    def target_similarity(self, teacher: Tensor, indices: Tensor) -> Tensor:
        """(B, B) target similarity in [0, 1] of a batch from its teacher embeddings (no gradient)."""
        raise NotImplementedError

    def forward(self, batch: BatchView) -> dict[str, Tensor]:
        """Loss terms of this process's rows; ``"loss"`` is the weighted total to back-propagate.

        Summed over processes, every term equals its value on the concatenated global batch.
        """
        raise NotImplementedError


# ------------------------------------------------------------------------------------- PLM

def binary_piece_similarity(members: Tensor, n: int) -> Tensor:
    """1 where j belongs to i's selected neighbourhood S_i or i to S_j, else 0; diagonal 1.

    Args:
        members: (N, K) long, -1 padded (:attr:`plm.manifold.Pieces.members`).
        n: number of points N.
    """
    s = torch.zeros(n, n, device=members.device)
    rows = torch.arange(n, device=members.device).unsqueeze(1).expand_as(members)
    valid = members >= 0
    s[rows[valid], members[valid]] = 1.0
    s = torch.maximum(s, s.T)
    s.fill_diagonal_(1.0)
    return s


class PLMMethod(Method):
    """The paper's method: PL similarity on teacher embeddings, L_point + L_proxy + L_neighbourhood.

    Args:
        embed_dim: d.
        manifold: :class:`plm.manifold.ManifoldConfig`.
        delta: δ of L_point and L_proxy.
        weights: (point, proxy, neighbourhood) loss weights.
        num_proxies: N_ρ; 0 disables proxies (the "no proxies" ablation).
        proxy_init: ``kmeans`` or ``random``.
        proxy_local_points: nearest points for each proxy's initial PCA basis.
        neighbourhood_points: n, points per proxy in L_neighbourhood.
        neighbourhood_lambda: λ in L_neighbourhood.
        similarity: ``continuous`` or ``binary`` (same-piece ablation).
        seed: seed of the proxy initialisation.
        loss_kind: how the target similarity trains the student (docs/method.md, "Losses"):
            ``regression`` (L_point: distances regress onto δ(1 − s)), ``weighted_regression``
            (the same with per-pair weights that give each row's similar and dissimilar pairs
            equal total weight) or ``relaxed_contrastive`` (STML's loss with the PL similarity as
            its soft weights, margin ``margin``).
        margin: δ of the relaxed contrastive loss.
        proxies_on_sphere: proxies live on the unit sphere with the embeddings (their locations
            are normalised wherever they are used).
        proxy_update: ``all`` (L_proxy and L_neighbourhood move the proxies) or
            ``neighbourhood`` (only L_neighbourhood does; L_proxy moves the points only).
        neighbourhood_radius: L_neighbourhood uses only points within this distance of the
            proxy (``None``: the n most similar points, wherever they are).
    """

    name = "plm"

    def __init__(self, embed_dim: int, manifold, delta: float = 1.5, weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 num_proxies: int = 100, proxy_init: str = "kmeans", proxy_local_points: int = 20,
                 neighbourhood_points: int = 4, neighbourhood_lambda: float = 0.5, similarity: str = "continuous",
                 seed: int = 0, loss_kind: str = "regression", margin: float = 1.0, proxies_on_sphere: bool = False,
                 proxy_update: str = "all", neighbourhood_radius: Optional[float] = None):
        super().__init__()
        if similarity not in ("continuous", "binary"):
            raise ValueError(f"similarity must be 'continuous' or 'binary', got {similarity!r}")
        if loss_kind not in PLM_LOSSES:
            raise ValueError(f"loss_kind must be one of {PLM_LOSSES}, got {loss_kind!r}")
        if proxy_update not in PROXY_UPDATES:
            raise ValueError(f"proxy_update must be one of {PROXY_UPDATES}, got {proxy_update!r}")
        self.loss_kind, self.margin = loss_kind, float(margin)
        self.proxies_on_sphere, self.proxy_update = bool(proxies_on_sphere), proxy_update
        self.neighbourhood_radius = neighbourhood_radius
        if delta <= 0:
            raise ValueError(f"delta must be positive, got {delta}")
        self.manifold = manifold
        self.delta = float(delta)
        self.w_point, self.w_proxy, self.w_neigh = (float(w) for w in weights)
        self.similarity = similarity
        self.proxy_init, self.proxy_local_points, self.seed = proxy_init, proxy_local_points, seed
        self.neighbourhood_points, self.neighbourhood_lambda = int(neighbourhood_points), float(neighbourhood_lambda)
        self.proxies: Optional[ProxyBank] = (ProxyBank(num_proxies, embed_dim, manifold.piece_dim, seed=seed)
                                             if num_proxies > 0 else None)

    def prepare(self, train_embeddings: Tensor) -> None:
        if self.proxies is not None:
            self.proxies.init_from_embeddings(train_embeddings, method=self.proxy_init,
                                              local_points=self.proxy_local_points, seed=self.seed,
                                              on_sphere=self.proxies_on_sphere)

    def proxy_locations(self) -> Tensor:
        """(K, d) ρ_k as the losses see them (on the unit sphere with ``proxies_on_sphere``)."""
        assert self.proxies is not None
        rho = self.proxies.locations
        return F.normalize(rho, dim=1) if self.proxies_on_sphere else rho

    def _points(self, teacher: Tensor) -> Tensor:
        return F.normalize(teacher, dim=1) if self.manifold.normalize_inputs else teacher

    @torch.no_grad()
    def target_similarity(self, teacher: Tensor, indices: Optional[Tensor] = None) -> Tensor:
        from plm.manifold import fit_pieces, similarity_matrix

        if self.similarity == "binary":
            return binary_piece_similarity(fit_pieces(teacher, self.manifold).members, teacher.shape[0])
        return similarity_matrix(teacher, self.manifold)

    @torch.no_grad()
    def proxy_similarity(self, teacher: Tensor) -> Tensor:
        """(B, K) s′(x_i, proxy k) of teacher points to the proxies' pieces (detached)."""
        from plm.manifold import directed_similarity

        assert self.proxies is not None
        rho = self.proxy_locations()
        return directed_similarity(self._points(teacher), rho, rho, self.proxies.orthonormal_bases(),
                                   self.manifold.n_alpha, self.manifold.n_beta)

    def point_term(self, batch: BatchView, s: Tensor) -> Tensor:
        """The point-pair loss of this process's rows under :attr:`loss_kind`."""
        rows = s[batch.rows]
        if self.loss_kind == "relaxed_contrastive":
            return relaxed_contrastive_loss(batch.student, batch.student_all, rows, self.margin, batch.row_start,
                                            denom=batch.num_pairs)
        weights = balanced_pair_weights(rows, batch.row_start) if self.loss_kind == "weighted_regression" else None
        return point_loss(batch.student, batch.student_all, rows, self.delta, batch.row_start, denom=batch.num_pairs,
                          weights=weights)

    def forward(self, batch: BatchView) -> dict[str, Tensor]:
        s = self.target_similarity(batch.teacher_all, batch.indices_all)
        l_point = self.point_term(batch, s)
        terms = {"point": l_point}
        total = self.w_point * l_point
        if self.proxies is not None:
            s_p = self.proxy_similarity(batch.teacher_all)  # (B, K)
            num = batch.student_all.shape[0] * self.proxies.num
            rho = self.proxy_locations()
            ref = rho if self.proxy_update == "all" else rho.detach()
            if self.loss_kind == "relaxed_contrastive":
                l_proxy = proxy_contrastive_loss(batch.student, ref, s_p[batch.rows], self.margin, denom=num)
            else:
                l_proxy = proxy_loss(batch.student, ref, s_p[batch.rows], self.delta, denom=num)
            # computed identically on every rank from the global batch: each contributes 1/world
            l_neigh = neighbourhood_loss(self._points(batch.teacher_all), rho, self.proxies.orthonormal_bases(), s_p,
                                         self.neighbourhood_points, self.neighbourhood_lambda,
                                         radius=self.neighbourhood_radius) / batch.world_size
            terms.update(proxy=l_proxy, neighbourhood=l_neigh)
            total = total + self.w_proxy * l_proxy + self.w_neigh * l_neigh
        terms["loss"] = total
        return terms


# ------------------------------------------------------------------------------------ STML

class STMLMethod(Method):
    """STML peer: contextual similarity (:func:`plm.estimators.stml_similarity`) + relaxed contrastive loss.

    Only the contextual-similarity target and the relaxed contrastive loss on row-mean-normalised
    student distances are reproduced (not STML's second head and self-distillation term).
    """

    name = "stml"

    def __init__(self, sigma: float = 3.0, k: int = 5, delta: float = 1.0):
        super().__init__()
        if sigma <= 0 or k < 1 or delta <= 0:
            raise ValueError(f"sigma, k and delta must be positive, got {sigma}, {k}, {delta}")
        self.sigma, self.k, self.delta = float(sigma), int(k), float(delta)

    def target_similarity(self, teacher: Tensor, indices: Optional[Tensor] = None) -> Tensor:
        from plm.estimators.stml import stml_target

        return stml_target(teacher, self.sigma, self.k).to(teacher.dtype)

    def forward(self, batch: BatchView) -> dict[str, Tensor]:
        w = self.target_similarity(batch.teacher_all)
        loss = relaxed_contrastive_loss(batch.student, batch.student_all, w[batch.rows], self.delta,
                                        batch.row_start, denom=batch.num_pairs)
        return {"contrastive": loss, "loss": loss}


# ---------------------------------------------------------------------------------- k-means

class KMeansMethod(Method):
    """k-means pseudo-label peer (DeepCluster / UDML-SS style), re-clustered every epoch.

    Pseudo-labels come from :func:`plm.estimators.kmeans_pseudo_labels` on the L2-normalised
    teacher embeddings of the whole training set.

    s_ij = 1 for a pair in the same cluster; contrastive loss with margin ``margin``.
    """

    name = "kmeans"

    def __init__(self, num_clusters: int = 100, margin: float = 1.0, seed: int = 0):
        super().__init__()
        if num_clusters < 1 or margin <= 0:
            raise ValueError(f"num_clusters and margin must be positive, got {num_clusters}, {margin}")
        self.num_clusters, self.margin, self.seed = int(num_clusters), float(margin), int(seed)
        self.register_buffer("pseudo_labels", torch.zeros(0, dtype=torch.long))

    def prepare(self, train_embeddings: Tensor) -> None:
        """Size the pseudo-label buffer (every rank, so that rank 0's labels can be broadcast)."""
        self._set_size(len(train_embeddings))

    def on_epoch_start(self, train_embeddings: Tensor, epoch: int) -> None:
        from plm.estimators import kmeans_pseudo_labels

        x = F.normalize(train_embeddings.detach().float(), dim=1).cpu().numpy()
        labels = kmeans_pseudo_labels(x, self.num_clusters, seed=self.seed + epoch)
        self.pseudo_labels = torch.from_numpy(labels).to(self.pseudo_labels.device)

    def _set_size(self, n: int) -> None:
        """Allocate the pseudo-label buffer (so that other ranks can receive a broadcast)."""
        if self.pseudo_labels.numel() != n:
            self.pseudo_labels = torch.zeros(n, dtype=torch.long, device=self.pseudo_labels.device)

    def target_similarity(self, teacher: Tensor, indices: Optional[Tensor] = None) -> Tensor:
        if indices is None:
            raise ValueError("the kmeans method needs the batch's training-set indices")
        if self.pseudo_labels.numel() == 0:
            raise RuntimeError("pseudo-labels not computed: call on_epoch_start first")
        y = self.pseudo_labels[indices.to(self.pseudo_labels.device)]
        return (y.unsqueeze(0) == y.unsqueeze(1)).float()

    def forward(self, batch: BatchView) -> dict[str, Tensor]:
        s = self.target_similarity(batch.teacher_all, batch.indices_all).to(batch.student.device)
        loss = contrastive_loss(batch.student, batch.student_all, s[batch.rows], self.margin, batch.row_start,
                                denom=batch.num_pairs)
        return {"contrastive": loss, "loss": loss}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if "pseudo_labels" in state_dict:
            self._set_size(int(state_dict["pseudo_labels"].numel()))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def build_method(config, embed_dim: int) -> Method:
    """The method a :class:`~plm.training.config.TrainConfig` names."""
    if config.method == "plm":
        return PLMMethod(embed_dim, config.manifold_config(), delta=config.loss.delta,
                         weights=(config.loss.point, config.loss.proxy, config.loss.neighbourhood),
                         num_proxies=config.proxies.num, proxy_init=config.proxies.init,
                         proxy_local_points=config.proxies.local_points,
                         neighbourhood_points=config.loss.neighbourhood_points,
                         neighbourhood_lambda=config.loss.neighbourhood_lambda, similarity=config.similarity,
                         seed=config.seed, loss_kind=config.loss.kind, margin=config.loss.margin,
                         proxies_on_sphere=config.proxies.on_sphere, proxy_update=config.proxies.update,
                         neighbourhood_radius=config.loss.neighbourhood_radius)
    if config.method == "stml":
        return STMLMethod(config.stml.sigma, config.stml.k, config.stml.delta)
    if config.method == "kmeans":
        return KMeansMethod(config.kmeans.num_clusters, config.kmeans.margin, seed=config.seed)
    raise ValueError(f"unknown method {config.method!r}")
