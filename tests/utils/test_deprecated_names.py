"""Old British-spelled public names still resolve, for one release, with a DeprecationWarning naming the new one."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

ALIASES = [
    ("plm.evaluation", "neighbour_hits", "neighbor_hits"),
    ("plm.evaluation.metrics", "neighbour_hits", "neighbor_hits"),
    ("plm.training", "NeighbourhoodSampler", "NeighborhoodSampler"),
    ("plm.training.sampler", "NeighbourhoodSampler", "NeighborhoodSampler"),
    ("plm.training.losses", "neighbourhood_loss", "neighborhood_loss"),
    ("plm.search", "exact_neighbours", "exact_neighbors"),
    ("plm.search.index", "exact_neighbours", "exact_neighbors"),
    ("plm.search", "recall_at_k", "ann_recall"),
    ("plm.search.index", "recall_at_k", "ann_recall"),
    ("plm.estimators.report", "neighbourhood_batches", "neighborhood_batches"),
]


@pytest.mark.parametrize(("module", "old", "new"), ALIASES)
def test_old_name_warns_and_is_the_new_object(module: str, old: str, new: str) -> None:
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=rf"{module}\.{old} is deprecated.*use {module}\.{new}"):
        value = getattr(mod, old)
    assert value is getattr(mod, new)


@pytest.mark.parametrize("module", sorted({m for m, _, _ in ALIASES}))
def test_unknown_names_still_raise_attribute_error(module: str) -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        importlib.import_module(module).no_such_name  # noqa: B018


def test_from_import_of_an_old_name_warns() -> None:
    with pytest.warns(DeprecationWarning, match="ann_recall"):
        from plm.search import recall_at_k
    from plm.search import ann_recall

    assert recall_at_k is ann_recall


def test_search_recall_is_not_the_retrieval_recall() -> None:
    from plm.evaluation import recall_at_k
    from plm.search import ann_recall

    assert ann_recall is not recall_at_k


def test_sampler_old_method_and_attribute_warn() -> None:
    from plm.training.sampler import NeighborhoodSampler

    table = np.array([[1], [0], [3], [2]])
    sampler = NeighborhoodSampler(4, batch_size=2, k=2)
    with pytest.warns(DeprecationWarning, match="set_neighbors"):
        sampler.set_neighbours(table)
    np.testing.assert_array_equal(sampler.neighbors, table)
    with pytest.warns(DeprecationWarning, match="use neighbors"):
        old = sampler.neighbours
    assert old is sampler.neighbors
