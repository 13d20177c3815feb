"""AdamW with per-group learning rates and a per-step warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine") -> float:
    """Multiplier of the base learning rate at ``step`` (0-based).

    Linear warm-up from 1/(warmup+1) to 1 over ``warmup_steps``, then ``constant`` or ``cosine``
    decay to 0 at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(groups: list[dict]) -> torch.optim.AdamW:
    """AdamW over named parameter groups (each with its own ``lr`` and ``weight_decay``).

    PyTorch's fused kernel where it has one (floating-point parameters on the CPU or a CUDA GPU):
    the same update, up to float rounding, in one pass over the parameters (docs/benchmarks.md).
    """
    if not groups:
        raise ValueError("nothing to optimise: no parameter requires a gradient")
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                    schedule: str = "cosine") -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step :class:`~torch.optim.lr_scheduler.LambdaLR` following :func:`lr_factor`."""
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup_steps, schedule)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class LossScaling:
    """Back-propagation and the optimiser step, with float16 loss scaling when the forward runs in float16.

    float16 gradients underflow without scaling; bfloat16 has float32's range and needs none. Without
    scaling every call is the plain one.

    Args:
        device: where training runs (the scaler's device type).
        amp: the forward passes' dtype (``None``: float32).
    """

    def __init__(self, device: torch.device, amp: torch.dtype | None) -> None:
        self.scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled when scaling."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their scale (before clipping them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; when scaling, skipped for gradients that overflowed, and the scale updated."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()
