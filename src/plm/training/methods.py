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
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plm.losses import PLMConfig, PLMLoss, ProxyBank, binary_piece_similarity
from plm.losses.functional import contrastive_loss, relaxed_contrastive_loss
from plm.training.registry import METHODS

if TYPE_CHECKING:
    from plm.training.config import TrainConfig

__all__ = ["METHODS", "BatchView", "KMeansMethod", "Method", "PLMMethod", "STMLMethod", "binary_piece_similarity",
           "build_method"]


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
        return self.loss.terms(batch.student, batch.student_all, batch.teacher_all, batch.row_start,
                               batch.world_size)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # checkpoints written before plm.losses kept the proxies at "proxies.*" instead of "loss.proxies.*"
        for key in [k for k in state_dict if k.startswith(prefix + "proxies.")]:
            state_dict[prefix + "loss." + key[len(prefix):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


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
    pseudo_labels: Tensor

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


# The builders that plm.training.registry.METHODS names (imported from there on first use).

def build_plm_method(config: TrainConfig, embed_dim: int) -> Method:
    """:class:`PLMMethod` from a training config."""
    plm = PLMConfig(manifold=config.manifold, loss=config.loss, proxies=config.proxies, similarity=config.similarity)
    return PLMMethod(embed_dim, plm, seed=config.seed)


def build_stml_method(config: TrainConfig, embed_dim: int) -> Method:
    """:class:`STMLMethod` from a training config."""
    return STMLMethod(config.stml.sigma, config.stml.k, config.stml.delta)


def build_kmeans_method(config: TrainConfig, embed_dim: int) -> Method:
    """:class:`KMeansMethod` from a training config."""
    return KMeansMethod(config.kmeans.num_clusters, config.kmeans.margin, seed=config.seed)


def build_method(config: TrainConfig, embed_dim: int) -> Method:
    """The method a :class:`~plm.training.config.TrainConfig` names (see :data:`METHODS`)."""
    return METHODS.get(config.method)(config, embed_dim)
