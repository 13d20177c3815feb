"""The device and mixed-precision choice shared by every command that runs a model.

``auto`` picks CUDA when a GPU is visible, else the CPU; asking for ``cuda`` without one is a
clear error. Mixed precision (``amp``) is autocast: ``bf16`` (bfloat16) or ``fp16`` (float16,
CUDA only; its gradients need a :class:`torch.amp.GradScaler`). On the CPU only ``bf16`` is
accepted: it runs, but it is faster only on CPUs with native bfloat16 instructions, so it is
mostly useful to check a GPU run's numerics on a laptop.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from plm.errors import UserError
from plm.utils.choices import AMP_MODES, DEVICES


def resolve_device(name: str = "auto", local_rank: Optional[int] = None) -> torch.device:
    """The :class:`torch.device` of ``auto`` | ``cpu`` | ``cuda`` (``cuda:local_rank`` when given).

    Raises:
        UserError: unknown name, or ``cuda`` asked for where no CUDA GPU is available.
    """
    if name not in DEVICES:
        raise UserError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda (device=cuda) but no CUDA GPU is available here; use --device cpu or auto")
        return torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
    return torch.device("cpu")


def amp_dtype(mode: str, device: torch.device | str) -> Optional[torch.dtype]:
    """The autocast dtype of an ``amp`` mode on ``device``; ``None`` for full precision.

    ``auto`` is bfloat16 where supported (every CPU; CUDA GPUs from Ampere on), else float16.

    Raises:
        UserError: unknown mode, or ``fp16`` on the CPU.
    """
    if mode is None or mode is False or mode == "off":
        return None
    if mode is True:
        mode = "auto"
    if mode not in AMP_MODES:
        raise UserError(f"amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    kind = torch.device(device).type
    if kind == "cuda":
        if mode == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if mode == "bf16" else torch.float16
    if mode == "fp16":
        raise UserError("--amp fp16 needs a CUDA GPU; on the CPU use --amp bf16 (or no --amp)")
    return torch.bfloat16


def autocast(device: torch.device | str, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context when ``dtype`` is ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def default_workers(device: torch.device | str, requested: Optional[int] = None) -> int:
    """DataLoader workers: ``requested`` when given, else up to 4 (leaving a core) on CUDA and 0 on the CPU.

    On the CPU the model and the decoding compete for the same cores, so extra processes seldom
    help; on a GPU, decoding in parallel keeps it fed.
    """
    if requested is not None:
        if requested < 0:
            raise UserError(f"--workers must be >= 0, got {requested}")
        return int(requested)
    if torch.device(device).type != "cuda":
        return 0
    import os

    return max(0, min(4, (os.cpu_count() or 1) - 1))
