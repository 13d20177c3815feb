"""Neighbourhood batch sampling (docs/method.md §2): N seeds, each with its k−1 nearest neighbours.

An epoch draws seeds from seeded permutations of the training set, so its batches depend only on
``(seed, epoch)`` and the k-NN table: the sampler's whole state is the epoch number, and the same
global batches come out whatever the number of processes. With ``world_size`` processes each
global batch's N seeds are split into ``world_size`` equal contiguous shards; a seed and its
neighbours always stay on the same rank, and concatenating the ranks' batches in rank order gives
the single-process batch.

By default an epoch has ``ceil(n / N)`` batches and every item is a seed once; the last batch is
topped up with seeds from the next permutation so all batches have the same size.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from plm.utils.deprecation import deprecated_names


class NeighborhoodSampler:
    """Yields lists of item positions: per batch, the local seeds each followed by its neighbours.

    Args:
        num_items: size of the training set (positions 0..n−1).
        batch_size: |B| of the *global* batch; a multiple of ``k``.
        k: group size (a seed plus its k−1 nearest neighbours).
        seed: base seed of the permutations.
        rank: this process's rank.
        world_size: number of processes; must divide the number of seeds per batch.
        batches_per_epoch: steps per epoch; ``None`` = ``ceil(num_items / seeds per batch)``.

    Raises:
        ValueError: inconsistent sizes.
    """

    def __init__(self, num_items: int, batch_size: int = 120, k: int = 5, seed: int = 0, rank: int = 0,
                 world_size: int = 1, batches_per_epoch: Optional[int] = None):
        if k < 1 or batch_size < 1 or batch_size % k:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of k ({k})")
        if num_items < max(2, k):
            raise ValueError(f"need at least max(2, k)={max(2, k)} training items, got {num_items}")
        self.num_seeds = batch_size // k
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if self.num_seeds % world_size:
            raise ValueError(f"the {self.num_seeds} seeds per batch (batch_size / k) must split evenly over "
                             f"{world_size} processes; choose batch_size as a multiple of k × world_size "
                             f"= {k * world_size}")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be positive or None, got {batches_per_epoch}")
        self.num_items, self.batch_size, self.k, self.seed = int(num_items), int(batch_size), int(k), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.batches_per_epoch = batches_per_epoch
        self.epoch = 0
        self.neighbors: Optional[np.ndarray] = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches :meth:`__iter__` yields."""
        self.epoch = int(epoch)

    def set_neighbors(self, table: np.ndarray) -> None:
        """The k-NN table: (num_items, ≥ k−1) positions of each item's nearest other items, nearest first.

        Raises:
            ValueError: wrong shape or out-of-range entries.
        """
        table = np.asarray(table, dtype=np.int64)
        if table.ndim != 2 or table.shape[0] != self.num_items or table.shape[1] < self.k - 1:
            raise ValueError(f"neighbour table must be ({self.num_items}, >= {self.k - 1}), got {table.shape}")
        if table.size and (table.min() < 0 or table.max() >= self.num_items):
            raise ValueError("neighbour table has entries outside [0, num_items)")
        self.neighbors = table[:, : self.k - 1].copy()

    def set_neighbours(self, table: np.ndarray) -> None:
        """Deprecated spelling of :meth:`set_neighbors` (kept for one release)."""
        warnings.warn("NeighborhoodSampler.set_neighbours is deprecated and will be removed in the next release; "
                      "use set_neighbors", DeprecationWarning, stacklevel=2)
        self.set_neighbors(table)

    @property
    def neighbours(self) -> Optional[np.ndarray]:
        """Deprecated spelling of :attr:`neighbors` (kept for one release)."""
        warnings.warn("NeighborhoodSampler.neighbours is deprecated and will be removed in the next release; "
                      "use neighbors", DeprecationWarning, stacklevel=2)
        return self.neighbors

    def __len__(self) -> int:
        return self.batches_per_epoch or math.ceil(self.num_items / self.num_seeds)

    def epoch_seeds(self, epoch: Optional[int] = None) -> np.ndarray:
        """(batches, N) seed positions of every global batch of ``epoch``."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        need = len(self) * self.num_seeds
        chunks, have = [], 0
        while have < need:
            chunks.append(rng.permutation(self.num_items))
            have += self.num_items
        return np.concatenate(chunks)[:need].reshape(len(self), self.num_seeds)

    def expand(self, seeds: np.ndarray) -> np.ndarray:
        """Seeds (N,) → batch (N·k,): each seed followed by its k−1 neighbours."""
        if self.neighbors is None:
            raise RuntimeError("call set_neighbors(table) before sampling")
        groups = np.concatenate([seeds[:, None], self.neighbors[seeds]], axis=1)
        return groups.reshape(-1)

    def global_batches(self, epoch: Optional[int] = None) -> Iterator[np.ndarray]:
        """The global (all ranks) batches of ``epoch``."""
        for seeds in self.epoch_seeds(epoch):
            yield self.expand(seeds)

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.num_seeds // self.world_size
        lo, hi = self.rank * per_rank, (self.rank + 1) * per_rank
        for seeds in self.epoch_seeds():
            yield self.expand(seeds[lo:hi]).tolist()

    def state_dict(self) -> dict:
        """The sampler's state (the batches are a function of it and the neighbour table)."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: the checkpoint was written with another sampler seed.
        """
        if int(state["seed"]) != self.seed:
            raise ValueError(f"sampler seed mismatch: checkpoint {state['seed']}, now {self.seed}")
        self.epoch = int(state["epoch"])


if not TYPE_CHECKING:  # old spellings, kept for one release; the type checker sees only the new names
    __getattr__ = deprecated_names(__name__, {"NeighbourhoodSampler": "NeighborhoodSampler"})


def knn_table(emb: Any, k: int, ctx: Any, device: Any) -> np.ndarray:
    """(N, k−1) nearest other training items of each item, the sampler's neighbour table: rank 0
    searches the teacher's embeddings ``emb`` where they are (:func:`plm.neighbors.knn_tensors`, on
    the GPU in a GPU run) and sends the table to every rank; the sampler gets it as an array.

    Args:
        emb: (N, d) tensor of the training set's embeddings.
        k: ``sampler.k`` (a seed and its k − 1 neighbours).
        ctx: the :class:`~plm.training.distributed.DistContext`.
        device: where the broadcast travels.
    """
    import torch

    from plm.neighbors import knn_tensors

    n, kk = emb.shape[0], k - 1
    if kk == 0:
        return np.zeros((n, 0), dtype=np.int64)
    table = (knn_tensors(emb.detach().float(), k=kk)[1].to(device) if ctx.is_main
             else torch.empty((n, kk), dtype=torch.long, device=device))
    return ctx.broadcast(table).cpu().numpy()
