"""The few collective operations training needs, as no-ops in a single process.

``torchrun --nproc_per_node=N -m plm train …`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`init_distributed` then joins the process group (gloo on CPU, NCCL on CUDA).

How a step stays equal to single-process training on the concatenated batch: each rank embeds
its local rows, teacher embeddings are gathered without gradient, student embeddings with an
autograd-aware all-gather (its backward sums the other ranks' gradients into each rank's rows),
each rank's loss is its local rows' share of the global mean, and :meth:`DistContext.all_reduce_grads`
sums the parameter gradients (no ``DistributedDataParallel`` wrapper, so the proxies and any
parameter used outside ``forward`` are handled the same way).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)
_JOINED = False  # this process joined a process group (see :func:`joined_process_group`)


@dataclass
class DistContext:
    """Rank, world size and collectives; the default instance is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, writes files and shows progress."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            torch.distributed.barrier()

    def gather(self, t: Tensor) -> Tensor:
        """Concatenate equal-shaped tensors of all ranks along dim 0, in rank order (no gradient)."""
        if not self.enabled:
            return t
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        torch.distributed.all_gather(out, t.contiguous())
        return torch.cat(out)

    def gather_with_grad(self, t: Tensor) -> Tensor:
        """Like :meth:`gather`, but gradients flow back to every rank's own rows."""
        if not self.enabled:
            return t
        return _GatherWithGrad.apply(t)

    def gather_uneven(self, t: Tensor) -> Tensor:
        """Concatenate tensors whose first dimension differs across ranks, in rank order."""
        if not self.enabled:
            return t
        n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
        sizes = self.gather(n).tolist()
        pad = torch.zeros((max(sizes) - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
        full = self.gather(torch.cat([t, pad]))
        chunks = full.split(max(sizes))
        # when every rank is empty, split() yields one empty chunk instead of one per rank: truncate
        return torch.cat([c[:s] for c, s in zip(chunks, sizes, strict=False)])

    def broadcast(self, t: Tensor, src: int = 0) -> Tensor:
        """``t`` of rank ``src`` on every rank (in place; returned for convenience)."""
        if self.enabled:
            torch.distributed.broadcast(t, src)
        return t

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy every parameter and buffer of rank 0's ``module`` to the other ranks."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                self.broadcast(t.data)

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """Sum over ranks (in place)."""
        if self.enabled:
            torch.distributed.all_reduce(t)
        return t

    def all_reduce_grads(self, params: Iterable[nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over ranks with one flattened all-reduce."""
        if not self.enabled:
            return
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        grads: list[Tensor] = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def shard(self, n: int) -> np.ndarray:
        """This rank's contiguous share of ``range(n)`` (sizes differ by at most one; no overlap)."""
        bounds = np.linspace(0, n, self.world_size + 1).round().astype(int)
        return np.arange(bounds[self.rank], bounds[self.rank + 1])


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient and keeps this rank's slice."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        import torch.distributed as dist

        ctx.rank, ctx.n = dist.get_rank(), t.shape[0]
        out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(out, t.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str = "cpu", timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by torchrun's environment variables.

    Returns a single-process context when ``WORLD_SIZE`` is unset or 1, or the current group's
    context when one is already initialised (e.g. by a test harness).

    Args:
        device: ``cpu`` → gloo, ``cuda`` → NCCL (and ``cuda:LOCAL_RANK`` becomes the current device).
        timeout_s: collective timeout; a rank that dies makes the others fail within it.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistContext(dist.get_rank(), dist.get_world_size(), local)
    world = env_world_size()
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    global _JOINED
    _JOINED = True
    log.debug("rank %d/%d joined (%s)", rank, world, backend)
    return DistContext(rank, world, local)


def joined_process_group() -> bool:
    """Whether :func:`init_distributed` joined a process group in this process (it may have ended since).

    Such a process should end with :func:`os._exit` once its output is flushed (``plm``'s entry point
    does): gloo's worker threads release their last collective's tensors on their own schedule, and
    when that happens during the interpreter's finalisation the thread cannot take the GIL and the
    process aborts (SIGABRT, "terminate called without an active exception") after its work is done.
    """
    return _JOINED


def shutdown_distributed(wait: bool = True) -> None:
    """End the process group; with ``wait``, after every rank got there, so that no rank closes its
    connections while another still reads from them (gloo then aborts the slower process). A no-op
    without a process group. A rank that failed passes ``wait=False``: the others may never come."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            if wait:
                torch.distributed.barrier()
        finally:
            torch.distributed.destroy_process_group()


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` uses ``cuda:LOCAL_RANK`` in distributed runs
    (:func:`plm.utils.device.resolve_device`).

    Raises:
        UserError: ``cuda`` requested without a GPU.
    """
    from plm.utils.device import resolve_device as _resolve

    return _resolve(name, ctx.local_rank if ctx.enabled else None)
