"""The STML peer: contextual similarity (:func:`plm.estimators.stml_similarity`) and the relaxed contrastive loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor

from plm.losses.functional import relaxed_contrastive_loss
from plm.training.methods.base import BatchView, Method
from plm.utils.config import check_positive

__all__ = ["STMLConfig", "STMLMethod"]


@dataclass
class STMLConfig:
    """STML peer (docs/method.md §8): W = (W_P + W_C)/2 (σ, k-reciprocal k), relaxed contrastive loss (δ)."""

    sigma: float = 3.0
    k: int = 5
    delta: float = 1.0

    def __post_init__(self) -> None:
        check_positive("stml.sigma", self.sigma)
        check_positive("stml.k", self.k)
        check_positive("stml.delta", self.delta)


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
        loss = relaxed_contrastive_loss(batch.student, w[batch.mine], self.delta, columns=batch.student_all,
                                        rows=batch.rows)
        return {"contrastive": loss, "loss": loss}

    @classmethod
    def from_config(cls, config: Any, embed_dim: int) -> STMLMethod:
        section: STMLConfig = config.stml
        return cls(section.sigma, section.k, section.delta)
