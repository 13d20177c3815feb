"""The neighbourhood expansion of a batch similarity against explicit loops, and its properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.references import reference_context, reference_expansion
from plm.losses import LossConfig, PLMConfig, PLMLoss
from plm.manifold import ManifoldConfig, similarity_matrix
from plm.manifold.expansion import expanded_similarity, nearest_rows
from plm.utils.config import ConfigError


def _batch(seed: int, n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d)))
    return x, similarity_matrix(x, ManifoldConfig())


@pytest.mark.parametrize("k", [1, 2, 5, 30])
@pytest.mark.parametrize("seed", [0, 1])
def test_expansion_matches_explicit_loops(k: int, seed: int) -> None:
    x, s = _batch(seed, 30, 6)
    got = expanded_similarity(s, x, k)
    np.testing.assert_allclose(got.numpy(), reference_expansion(s.numpy(), x.numpy(), k), atol=1e-12)


def test_duplicate_points_keep_batch_order() -> None:
    x, _ = _batch(3, 12, 4)
    x = torch.cat([x, x[:4]])  # a seed group drawn twice
    s = similarity_matrix(x, ManifoldConfig())
    got = expanded_similarity(s, x, 5)
    np.testing.assert_allclose(got.numpy(), reference_expansion(s.numpy(), x.numpy(), 5), atol=1e-12)
    assert nearest_rows(x, 3)[0].tolist()[0] == 0 and nearest_rows(x, 3)[12].tolist()[0] == 12


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 25), d=st.integers(1, 8), k=st.integers(0, 30))
def test_expansion_properties(seed: int, n: int, d: int, k: int) -> None:
    x, s = _batch(seed, n, d)
    got = expanded_similarity(s, x, k)
    assert got.shape == s.shape and torch.allclose(got, got.T)
    assert bool((got.diagonal() == 1).all())
    assert float(got.min()) >= float(s.min()) - 1e-12 and float(got.max()) <= 1.0 + 1e-12
    if k <= 1:
        assert torch.equal(got, s)


def test_plm_loss_uses_the_expanded_target() -> None:
    x, _ = _batch(5, 40, 8)
    x = x.float()
    manifold = ManifoldConfig(group_size=5)
    plain = PLMLoss(PLMConfig(manifold=manifold, loss=LossConfig(expansion=0, context=0)), embed_dim=8,
                    num_proxies=0).target_similarity(x)
    expanded = PLMLoss(PLMConfig(manifold=manifold, loss=LossConfig(expansion=5, context=0)), embed_dim=8,
                       num_proxies=0).target_similarity(x)
    torch.testing.assert_close(expanded, expanded_similarity(plain, x, 5))
    assert not torch.allclose(expanded, plain)


@pytest.mark.parametrize("value", [-1, 2.5, True, "5"])
def test_expansion_must_be_a_count(value: object) -> None:
    with pytest.raises(ConfigError, match="loss.expansion"):
        LossConfig(expansion=value)  # type: ignore[arg-type]


def test_estimator_expansion_is_the_training_target_and_needs_dense_mode() -> None:
    from plm.estimators.pl import PLManifoldEstimator

    x = np.random.default_rng(7).normal(size=(30, 5))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    plain = PLManifoldEstimator().fit(unit).similarity()
    expanded = PLManifoldEstimator(expansion=4).fit(unit).similarity()
    want = expanded_similarity(torch.from_numpy(np.asarray(plain, dtype=np.float64)), torch.from_numpy(unit), 4)
    np.testing.assert_allclose(expanded, want.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="dense mode"):
        PLManifoldEstimator(expansion=4, dense_max=10).fit(unit)


def test_estimator_context_is_the_training_target_and_needs_dense_mode() -> None:
    """``PLManifoldEstimator(context=…)`` scores pairs as training's ``loss.context`` lifts its target."""
    from plm.estimators.pl import PLManifoldEstimator
    from plm.estimators.stml import contextual_target

    x = np.random.default_rng(8).normal(size=(40, 5))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    plain = torch.from_numpy(np.asarray(PLManifoldEstimator().fit(unit).similarity(), dtype=np.float64))
    for c, mode in [(0.25, "raise"), (0.5, "mix")]:
        got = PLManifoldEstimator(context=c, context_k=4, context_mode=mode).fit(unit).similarity()
        want = torch.from_numpy(reference_context(plain.numpy(), 4, c, mode))
        np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
        np.testing.assert_allclose(contextual_target(plain, c, 4, mode).numpy(), want.numpy(), atol=1e-12)
    lifted = PLManifoldEstimator(context=0.25).fit(unit).similarity()
    assert np.all(lifted >= plain.numpy() - 1e-7) and np.any(lifted > plain.numpy() + 1e-3)
    with pytest.raises(ValueError, match="dense mode"):
        PLManifoldEstimator(context=0.25, dense_max=10).fit(unit)
    for bad in [{"context": 1.5}, {"context": -0.1}, {"context_k": 0}, {"context_mode": "max"}]:
        with pytest.raises(ValueError):
            PLManifoldEstimator(**bad).fit(unit)
