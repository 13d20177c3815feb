"""Neighbourhood batch sampler: groups, coverage, determinism, sharding over ranks."""

from __future__ import annotations

import numpy as np
import pytest

from plm.training.sampler import NeighborhoodSampler


def _table(n: int, k: int, seed: int = 0) -> np.ndarray:
    """A fake k-NN table: k−1 distinct other items per row."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        others = np.setdiff1d(np.arange(n), [i])
        rows.append(rng.choice(others, size=k - 1, replace=False))
    return np.stack(rows)


def test_batches_hold_each_seed_with_its_neighbours() -> None:
    table = _table(50, 5)
    s = NeighborhoodSampler(50, batch_size=20, k=5, seed=3)
    s.set_neighbors(table)
    for batch in s:
        assert len(batch) == 20
        groups = np.asarray(batch).reshape(-1, 5)
        for g in groups:
            assert list(g[1:]) == list(table[g[0]])


@pytest.mark.parametrize("n", [40, 47])
def test_every_item_is_a_seed_each_epoch(n: int) -> None:
    s = NeighborhoodSampler(n, batch_size=20, k=5, seed=0)
    s.set_neighbors(_table(n, 5))
    for epoch in range(3):
        s.set_epoch(epoch)
        seeds = s.epoch_seeds()
        assert seeds.shape == (len(s), 4)
        counts = np.bincount(seeds.ravel(), minlength=n)
        assert (counts >= 1).all()
        assert sorted(seeds.ravel()[:n]) == list(range(n))  # only the last batch's top-up repeats
        if n % 4 == 0:
            assert (counts == 1).all()


def test_epochs_are_deterministic_and_distinct() -> None:
    a = NeighborhoodSampler(60, 12, 3, seed=5)
    b = NeighborhoodSampler(60, 12, 3, seed=5)
    assert np.array_equal(a.epoch_seeds(2), b.epoch_seeds(2))
    assert not np.array_equal(a.epoch_seeds(1), a.epoch_seeds(2))
    assert not np.array_equal(a.epoch_seeds(1), NeighborhoodSampler(60, 12, 3, seed=6).epoch_seeds(1))


def test_batches_per_epoch_option() -> None:
    s = NeighborhoodSampler(30, 10, 5, batches_per_epoch=7)
    s.set_neighbors(_table(30, 5))
    assert len(s) == 7 and len(list(s)) == 7


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_partition_the_global_batch(world: int) -> None:
    n, table = 64, _table(64, 3)
    single = NeighborhoodSampler(n, batch_size=24, k=3, seed=1)
    single.set_neighbors(table)
    ranks = []
    for r in range(world):
        s = NeighborhoodSampler(n, batch_size=24, k=3, seed=1, rank=r, world_size=world)
        s.set_neighbors(table)
        ranks.append(list(s))
    for step, batch in enumerate(single):
        merged = sum((ranks[r][step] for r in range(world)), [])
        assert merged == batch
        for r in range(world):  # seeds and neighbours never split across ranks
            assert len(ranks[r][step]) % 3 == 0
    # every seed is covered exactly once per epoch across ranks (64 items, 8 seeds/batch)
    seeds = [b[i] for r in range(world) for b in ranks[r] for i in range(0, len(b), 3)]
    assert sorted(seeds) == list(range(n))


def test_state_roundtrip() -> None:
    s = NeighborhoodSampler(20, 10, 5, seed=2)
    s.set_epoch(4)
    t = NeighborhoodSampler(20, 10, 5, seed=2)
    t.load_state_dict(s.state_dict())
    assert t.epoch == 4
    with pytest.raises(ValueError, match="seed mismatch"):
        NeighborhoodSampler(20, 10, 5, seed=3).load_state_dict(s.state_dict())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of k"):
        NeighborhoodSampler(20, 12, 5)
    with pytest.raises(ValueError, match="split evenly"):
        NeighborhoodSampler(20, 15, 5, world_size=2)
    with pytest.raises(ValueError, match="at least"):
        NeighborhoodSampler(3, 10, 5)
    s = NeighborhoodSampler(20, 10, 5)
    with pytest.raises(ValueError, match="neighbour table"):
        s.set_neighbors(np.zeros((20, 2), dtype=int))
    with pytest.raises(RuntimeError, match="set_neighbors"):
        next(iter(s))
