"""The k-means pseudo-label peer (DeepCluster / UDML-SS style), re-clustered every epoch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from plm.losses.functional import contrastive_loss
from plm.training.methods.base import BatchView, Method, cap_per_group
from plm.utils.config import check_positive

__all__ = ["KMeansConfig", "KMeansMethod"]


@dataclass
class KMeansConfig:
    """k-means pseudo-label peer: clusters of the teacher's training embeddings, every epoch."""

    num_clusters: int = 100
    margin: float = 1.0

    def __post_init__(self) -> None:
        check_positive("kmeans.num_clusters", self.num_clusters)
        check_positive("kmeans.margin", self.margin)


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
        loss = contrastive_loss(batch.student, s[batch.mine], self.margin, columns=batch.student_all, rows=batch.rows)
        return {"contrastive": loss, "loss": loss}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        if "pseudo_labels" in state_dict:
            self._set_size(int(state_dict["pseudo_labels"].numel()))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def from_config(cls, config: Any, embed_dim: int) -> KMeansMethod:
        section: KMeansConfig = config.kmeans
        return cls(section.num_clusters, section.margin, seed=config.seed)

    @classmethod
    def fit_to_data(cls, config: Any, num_train: int) -> tuple[dict[str, Any], list[str]]:
        """At most one cluster per ``sampler.k`` training images (at least 2)."""
        return cap_per_group("kmeans.num_clusters", config.kmeans.num_clusters, num_train, config.sampler.k, 2,
                             "cluster")
