"""Sizes that fit the data: settings larger than the training set allows are capped, with a notice.

Checked on the training split's size, before any feature extraction, by :class:`~plm.training.Trainer`:

- ``sampler.batch_size`` at most the training set, rounded down to a multiple of
  ``sampler.k × world size`` (the sampler's unit);
- each method's own sizes (its :meth:`~plm.training.methods.Method.fit_to_data`): ``proxies.num``
  (method ``plm``) and ``kmeans.num_clusters`` (method ``kmeans``) at most one per ``sampler.k``
  training images, the size of one neighbourhood group (at least 1 proxy, 2 clusters);

so that ``plm train --dataset folder --data-root <60 images>`` trains with what 60 images support.
Only a training set too small for a single neighbourhood group (fewer than ``max(2, sampler.k)``
images, or than one batch unit) is an error.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import torch

from plm.errors import UserError

#: the side at which ``finetune_max_images`` counts images (a 112-px image counts as a quarter)
REFERENCE_SIDE = 224


def resolve_mode(config: Any, num_train: int, device_type: str = "cpu") -> tuple[str, str]:
    """The mode ``mode: auto`` stands for, and why: ``finetune`` on a GPU, or on the CPU when the
    training images, counted at 224 px (each weighted by its pixel count over 224²), are at most
    ``finetune_max_images``; ``frozen`` otherwise. A whole-network step costs tens of head-only
    steps on the CPU, so only small collections are fine-tuned there."""
    if device_type == "cuda":
        return "finetune", "a GPU is in use"
    from plm.models.backbones import input_side

    side = config.model.image_size or input_side(config.model.backbone)
    weighted = num_train * (side / REFERENCE_SIDE) ** 2
    count = f"{num_train} training images at {side} px" + (
        f" count as {weighted:.0f} at {REFERENCE_SIDE} px" if side != REFERENCE_SIDE else "")
    if weighted <= config.finetune_max_images:
        return "finetune", f"{count}, at most finetune_max_images={config.finetune_max_images}"
    return "frozen", f"{count}, more than finetune_max_images={config.finetune_max_images} on the CPU; " \
                     f"mode=finetune trains the whole network anyway"


def fit_to_data(config: Any, num_train: int, world_size: int = 1,
                device_type: str = "cpu") -> tuple[Any, list[str]]:
    """``config`` with ``mode: auto`` resolved and its data-bound sizes capped to ``num_train``
    training images, and one notice per change.

    Args:
        config: a :class:`~plm.training.config.TrainConfig` (not modified).
        num_train: images in the training split.
        world_size: training processes (the batch is split over them).
        device_type: ``cpu`` or ``cuda`` (for ``mode: auto``).

    Returns:
        (the config, unchanged when nothing needed capping; the notices).

    Raises:
        UserError: the training set is too small to form one neighbourhood group or one batch.
    """
    from plm.training.config import TrainConfig, deep_merge

    k = config.sampler.k
    unit = k * world_size
    need = max(2, k, unit)
    if num_train < need:
        per_process = f" on each of {world_size} processes" if world_size > 1 else ""
        raise UserError(f"the training split has {num_train} image(s); plm train needs at least {need} "
                        f"(a seed and its sampler.k-1={k - 1} neighbours{per_process}); "
                        f"add images or lower sampler.k")
    changes: dict[str, Any] = {}
    notices: list[str] = []
    if config.mode == "auto":
        mode, why = resolve_mode(config, num_train, device_type)
        changes["mode"] = mode
        notices.append(f"mode auto: {mode} ({why})")
        if mode == "finetune" and (config.model.train_blocks or config.data.views):
            changes["model"] = {"train_blocks": 0}
            changes["data"] = {"views": 0}  # frozen-mode options: finetuning trains every step on fresh views
    batch = config.sampler.batch_size
    if batch > num_train:
        new = num_train // unit * unit
        changes["sampler"] = {"batch_size": new}
        notices.append(f"sampler.batch_size={batch} is more than the {num_train} training images: using {new} "
                       f"(a multiple of sampler.k={k}{f' x {world_size} processes' if world_size > 1 else ''})")
    from plm.training.registry import METHODS

    method_changes, method_notices = METHODS.get(config.method).fit_to_data(config, num_train)
    changes.update(method_changes)
    notices += method_notices
    if not changes:
        return config, []
    return TrainConfig.from_dict(deep_merge(config.to_dict(), changes)), notices


def _available_memory(device: torch.device) -> Optional[int]:
    """Bytes of memory free for tensors on ``device`` (``None`` when unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


#: bytes per pair of batch items the methods hold at once (a few B × B float32 matrices and their gradients)
PAIR_BYTES = 64


def check_batch_size(config: Any, num_train: int, device: torch.device) -> None:
    """Refuse a batch that the training set cannot fill or that cannot fit in memory.

    Raises:
        UserError: ``sampler.batch_size`` above the number of training images, or above what the
            available memory allows for the batch's pairwise matrices.
    """
    b, k = config.sampler.batch_size, config.sampler.k
    if b > num_train:
        raise UserError(f"sampler.batch_size must be at most the {num_train} training images (and a multiple of "
                        f"sampler.k={k}); got {b}")
    free = _available_memory(device)
    if free is not None:
        limit = int(math.isqrt(max(free // PAIR_BYTES, 1)))
        if b > limit:
            raise UserError(f"sampler.batch_size={b} needs about {PAIR_BYTES * b * b / 2**30:.1f} GiB for its pairwise "
                            f"matrices, more than the {free / 2**30:.1f} GiB free on {device.type}; use at most "
                            f"{limit - limit % k}")
