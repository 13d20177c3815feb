"""What a training run returns (:func:`plm.training.train`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from plm.models import EmbeddingModel
from plm.training.config import TrainConfig

__all__ = ["TrainResult"]


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        config: the resolved configuration.
        out_dir: the output folder.
        history: one dict per epoch (the rows of ``metrics.csv``).
        selection: ``val_map_at_r`` (validation MAP@R, higher is better; the pretrained features
            and the untrained model, epoch 0, are candidates: :mod:`plm.training.selection`) or
            ``train_pair_loss`` (mean training loss of the pair term, lower is better; used
            without a validation split).
        best_epoch: the selected epoch (1-based; 0 = the untrained model; ``-1``
            (:data:`~plm.training.selection.PRETRAINED`) = the pretrained features, kept because no
            epoch beat them on validation by more than the margin).
        training_helped: whether a trained epoch beat the pretrained features on validation
            (``None`` without a validation split: it cannot be known).
        verdict: the one line that says so.
        best_checkpoint: path of ``best.pt``.
        last_checkpoint: path of ``last.pt``.
        test_metrics: test-split metrics of the best checkpoint (``None`` without a labelled test split).
        baseline_metrics: test-split metrics of the pretrained backbone (``None`` when not computed).
        model: the best model (CPU, eval mode).
    """

    config: TrainConfig
    out_dir: Path
    history: list[dict[str, Any]]
    selection: str
    best_epoch: int
    training_helped: Optional[bool]
    verdict: str
    best_checkpoint: Path
    last_checkpoint: Path
    test_metrics: Optional[dict[str, Any]] = None
    baseline_metrics: Optional[dict[str, Any]] = None
    model: Optional[EmbeddingModel] = field(default=None, repr=False)
