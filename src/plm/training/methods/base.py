"""What every training method is: the batch it sees (:class:`BatchView`) and its hooks (:class:`Method`).

A method is a config choice, not a copy of the training loop. Each is an ``nn.Module`` (its
learnable parameters, e.g. proxies, and its state, e.g. pseudo-labels, are checkpointed with it)
with three training hooks:

- :meth:`Method.prepare` once, with the pretrained teacher embeddings of the training set;
- :meth:`Method.on_epoch_start` every epoch, with the current teacher's training embeddings;
- :meth:`Method.forward` every step, with a :class:`BatchView`, returning the loss terms;

and three class-level hooks that the configuration and the trainer call by the method's name
(:data:`plm.training.registry.METHODS`): :meth:`Method.from_config` builds it from its own config
section, :meth:`Method.check_config` checks the settings it depends on, and
:meth:`Method.fit_to_data` caps its sizes to a small training set.

The ``config`` these class methods take is a :class:`plm.training.config.TrainConfig` (typed
``Any`` here: the configuration imports the methods' sections, never the other way round).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from plm.losses.functional import ALL_ROWS, Rows
from plm.utils.config import check

__all__ = ["BatchView", "Method", "cap_per_group"]


@dataclass
class BatchView:
    """One step's batch as a method sees it (global = the batch over all processes).

    Attributes:
        student: (R, d) student embeddings of this process's rows (with gradient).
        student_all: (B, d) student embeddings of the global batch (gradient flows to every rank).
        teacher_all: (B, d) teacher embeddings of the global batch (no gradient).
        indices_all: (B,) training-set positions of the global batch.
        rows: where this process's rows sit in the global batch, and the global pair count the pair
            losses divide by (:class:`plm.losses.functional.Rows`).
    """

    student: Tensor
    student_all: Tensor
    teacher_all: Tensor
    indices_all: Tensor
    rows: Rows = ALL_ROWS

    @classmethod
    def gathered(cls, student: Tensor, teacher_all: Tensor, positions: Tensor, ctx: Any) -> BatchView:
        """This process's rows as the method sees the global batch: every rank's student rows (gradient
        flowing back to each rank's own) and training-set positions, in rank order.

        Args:
            student: (R, d) this process's student embeddings.
            teacher_all: (B, d) the teacher's embeddings of the global batch, in rank order.
            positions: (R,) its rows' training-set positions.
            ctx: the :class:`~plm.training.distributed.DistContext` (single process: nothing gathered).
        """
        student_all = ctx.gather_with_grad(student)
        if teacher_all.shape[0] != student_all.shape[0]:
            raise ValueError(f"teacher embeddings of {teacher_all.shape[0]} rows for a global batch of "
                             f"{student_all.shape[0]}")
        rows = Rows.of_process(ctx.rank * student.shape[0], student_all.shape[0], ctx.world_size)
        return cls(student, student_all, teacher_all, ctx.gather(positions), rows)

    @property
    def mine(self) -> slice:
        """This process's rows within the global batch (to select a (B, ·) target's rows)."""
        return self.rows.slice(self.student.shape[0])


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

    # ---------------------------------------------------------------- class-level hooks
    @classmethod
    def from_config(cls, config: Any, embed_dim: int) -> Method:
        """The method as a training config describes it (from its own section)."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Refuse settings this method cannot train with (called by the config's validation).

        By default ``similarity=binary`` (an ablation of method ``plm``) is refused.

        Raises:
            ConfigError: a setting this method does not support.
        """
        check(config.similarity == "continuous", f"similarity=binary is an ablation of method plm only (method "
                                                 f"{config.method})")

    @classmethod
    def fit_to_data(cls, config: Any, num_train: int) -> tuple[dict[str, Any], list[str]]:
        """Config changes (a nested dict) and one notice each that fit this method's sizes to
        ``num_train`` training images (:func:`plm.training.sizing.fit_to_data`); none by default."""
        return {}, []


def cap_per_group(key: str, value: int, num_train: int, k: int, least: int,
                  what: str) -> tuple[dict[str, Any], list[str]]:
    """The config change and notice that cap ``key`` (``section.name``, now ``value``) at one per
    ``sampler.k`` training images (at least ``least``): a :meth:`Method.fit_to_data` for a count of
    proxies, clusters … (``what``, singular)."""
    limit = max(least, num_train // k)
    if value <= limit:
        return {}, []
    section, name = key.split(".")
    return {section: {name: limit}}, [f"{key}={value} is more than {num_train} training images allow (one {what} "
                                      f"per sampler.k={k} images): using {limit}"]
