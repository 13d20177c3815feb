"""The momentum (EMA) teacher: φ ← m·φ + (1−m)·θ after every optimiser step (docs/method.md §2)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMATeacher(nn.Module):
    """A frozen copy of a student network, moved towards it by an exponential moving average.

    Parameters follow the EMA; buffers (e.g. BatchNorm running statistics) are copied. The
    teacher is always in eval mode and never requires gradients.

    Args:
        student: the network whose average is kept (copied at construction).
        momentum: m in [0, 1]; 1 keeps the initial weights, 0 copies the student every step.

    Raises:
        ValueError: momentum outside [0, 1].
    """

    def __init__(self, student: nn.Module, momentum: float = 0.999):
        super().__init__()
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.module = copy.deepcopy(student)
        self.module.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> EMATeacher:
        super().train(False)
        return self

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """One EMA step towards ``student`` (same architecture)."""
        m = self.momentum
        t_params = dict(self.module.named_parameters())
        for name, p in student.named_parameters():
            t = t_params[name]
            t.mul_(m).add_(p.detach().to(t.dtype), alpha=1.0 - m)
        t_bufs = dict(self.module.named_buffers())
        for name, b in student.named_buffers():
            t_bufs[name].copy_(b)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)
