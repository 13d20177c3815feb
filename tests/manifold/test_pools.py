"""The batched PL model against the explicit-loop reference on the candidate pools of training.

A training batch is seed groups of k points (a seed and its k − 1 nearest neighbours); the PL
model draws each anchor's candidates from its seed group, its 16 nearest points or the whole batch
(docs/method.md §3). The batched code (the batch in float64 coordinates of its span and their
Gram matrix, pieces held as coefficients, every pair scored in those coordinates) must give the
reference's neighbourhoods, pieces and similarities, in float32 and float64, with the compiled
kernels (:mod:`plm.manifold.kernels`, the CPU's path) and with the tensor code (a GPU's), and so
must the path for large inputs (pieces built in R^d, pairs scored block by block).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plm.manifold import ManifoldConfig, Pieces, fit_pieces, pairwise_similarity, similarity_matrix
from plm.manifold import pieces as pieces_module
from plm.manifold.reference import reference_fit, reference_similarity

POOLS = {"seed group": dict(group_size=5), "16 nearest": dict(max_candidates=16),
         "whole batch": dict(max_candidates=None)}
#: the largest difference from the reference: in float64 the rounding of o = √(‖x − μ‖² − ‖c‖²) for
#: points on a piece (o² ≈ 1e-16, so o ≈ 1e-8); float32 inputs are normalised and the result is
#: returned in float32; the large-input path builds float32 pieces in R^d (o² ≈ 1e-7)
TOL = {(torch.float64, False): 5e-8, (torch.float64, True): 5e-8, (torch.float32, False): 1e-6,
       (torch.float32, True): 5e-4}
#: the three ways a batch is fitted and scored: compiled kernels on one Gram matrix (the CPU), the
#: tensor code on it (a GPU, or no numba), and the large-input path (pieces in R^d, by blocks)
PATHS = ["compiled kernels", "tensor code", "large-input path"]


def use_path(monkeypatch: pytest.MonkeyPatch, path: str) -> bool:
    """Select a path; True for the large-input one."""
    if path == "large-input path":
        monkeypatch.setattr(pieces_module, "GLOBAL_GRAM_MAX", 0)
    monkeypatch.setenv("PLM_KERNELS", "1" if path == "compiled kernels" else "0")
    return path == "large-input path"


def seed_groups(seed: int, groups: int = 6, k: int = 5, d: int = 24) -> np.ndarray:
    """A batch of ``groups`` seed groups of ``k`` points: centres plus noise of varying spread,
    most variance in the first coordinates (as trained embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, d))
    spread = rng.uniform(0.3, 1.2, size=(groups, 1, 1))
    x = centres[:, None, :] + spread * rng.normal(size=(groups, k, d)) * np.linspace(1.0, 0.2, d)
    return x.reshape(groups * k, d)


def _projectors(bases: np.ndarray) -> np.ndarray:
    return np.einsum("ndk,nek->nde", bases, bases)


@pytest.mark.parametrize("pool", list(POOLS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("eps,seed", [(1.5, 0), (1.2, 7)])  # the default ε, and one that rejects more
@pytest.mark.parametrize("path", PATHS)
def test_batched_model_equals_the_reference(monkeypatch: pytest.MonkeyPatch, pool: str, dtype: torch.dtype,
                                            eps: float, seed: int, path: str) -> None:
    large = use_path(monkeypatch, path)
    x = torch.from_numpy(seed_groups(seed)).to(dtype)
    cfg = ManifoldConfig(eps=eps, **POOLS[pool])
    ref_input = x.double().numpy()  # the reference sees the same numbers, in float64
    ref = reference_fit(ref_input, cfg)
    pieces = fit_pieces(x, cfg)
    assert isinstance(pieces, Pieces) and (pieces.gram is None) == large
    assert pieces.groups() == [r["members"] for r in ref]
    sizes = pieces.sizes.numpy()
    assert 2 <= sizes.min() < sizes.max()  # some candidates were rejected: the selection is exercised
    tol = TOL[dtype, large]
    rounding = 1e-12 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(pieces.means.double().numpy(), np.stack([r["mean"] for r in ref]), atol=rounding)
    np.testing.assert_allclose(_projectors(pieces.bases.double().numpy()),
                               _projectors(np.stack([r["basis"] for r in ref])), atol=10 * rounding)
    want = reference_similarity(ref_input, cfg)
    s = similarity_matrix(x, cfg)
    assert s.dtype == dtype
    np.testing.assert_allclose(s.double().numpy(), want, atol=tol, rtol=0)
    np.testing.assert_allclose(pairwise_similarity(x, pieces, cfg).double().numpy(), want, atol=tol, rtol=0)


EDGE_EPS = {"residual_variance": 0.2, "relative_residual": 0.3, "candidate_residual": 0.4,
            "relative_candidate_residual": 1.2}


def edge_batch(seed: int) -> np.ndarray:
    """:func:`seed_groups` with the awkward cases of a real batch: a group where ``stop`` and ``skip``
    part (a candidate off the seed's line before one on it), a point equal to its group's seed,
    equal points inside a group and across groups, a group on a line (on the sphere an arc) and a
    group of one point repeated (rank 0)."""
    x = seed_groups(seed)
    rng = np.random.default_rng(seed + 100)
    u, v, w = np.linalg.qr(rng.normal(size=(x.shape[1], 3)))[0].T
    # from its seed: two points on a line, one slightly off it, one far off it, one on it again
    x[15:20] = x[15] + np.array([0.0, 0.1, 0.2, 0.15, 0.3])[:, None] * u + 0.02 * np.eye(5)[2][:, None] * w \
        + 0.2 * np.eye(5)[3][:, None] * v
    x[1] = x[0]
    x[7] = x[5]
    x[10:15] = x[10] + rng.normal(size=(5, 1)) * rng.normal(size=(1, x.shape[1]))
    x[20:25] = x[20]
    x[26] = x[3]
    return x


def _ranks(bases: np.ndarray) -> list[int]:
    return [int((np.abs(b).sum(0) > 0).sum()) for b in bases]


@pytest.mark.parametrize("pool", list(POOLS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("criterion", list(EDGE_EPS))
@pytest.mark.parametrize("on_breach", ["skip", "stop"])
@pytest.mark.parametrize("path", PATHS)
def test_selection_edge_cases_equal_the_reference(monkeypatch: pytest.MonkeyPatch, pool: str, dtype: torch.dtype,
                                                  criterion: str, on_breach: str, path: str) -> None:
    """Duplicates (exact distance ties, zero nearest distance), pieces of rank below piece_dim,
    skip and stop: the same neighbourhoods, ranks, pieces and similarities as the reference."""
    large = use_path(monkeypatch, path)
    x = torch.from_numpy(edge_batch(1)).to(dtype)
    cfg = ManifoldConfig(piece_dim=2, eps=EDGE_EPS[criterion], criterion=criterion, on_breach=on_breach,
                         **POOLS[pool])
    ref_input = x.double().numpy()
    ref = reference_fit(ref_input, cfg)
    pieces = fit_pieces(x, cfg)
    assert pieces.groups() == [r["members"] for r in ref]
    ref_bases = np.stack([r["basis"] for r in ref])
    assert pieces.ranks.tolist() == _ranks(ref_bases) == _ranks(pieces.bases.numpy())
    if pool == "seed group":  # the group of one repeated point
        assert pieces.ranks[20:25].tolist() == [0] * 5
    rounding = 1e-12 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(pieces.means.double().numpy(), np.stack([r["mean"] for r in ref]), atol=rounding)
    np.testing.assert_allclose(_projectors(pieces.bases.double().numpy()), _projectors(ref_bases),
                               atol=10 * rounding)
    # the thin piece of the seed 15 (λ₂/λ₁ ≈ 4e-3) turns float32's rounding of the normalised points
    # into ~2e-6 of s (the reference normalises in float64)
    tol = max(TOL[dtype, large], 5e-6) if dtype == torch.float32 else TOL[dtype, large]
    np.testing.assert_allclose(similarity_matrix(x, cfg).double().numpy(), reference_similarity(ref_input, cfg),
                               atol=tol, rtol=0)


def test_stop_and_duplicates_are_exercised() -> None:
    """The edge batch does what :func:`test_selection_edge_cases_equal_the_reference` relies on: stop
    ends some neighbourhoods that skip grows further, and equal points join each other first."""
    x = torch.from_numpy(edge_batch(1))
    for pool in POOLS.values():
        cfg = ManifoldConfig(criterion="relative_candidate_residual", eps=EDGE_EPS["relative_candidate_residual"],
                             **pool)
        skip = fit_pieces(x, cfg)
        stop = fit_pieces(x, dataclasses.replace(cfg, on_breach="stop"))
        assert (stop.sizes <= skip.sizes).all() and (stop.sizes < skip.sizes).any()
        assert skip.groups()[0][:2] == [0, 1] and skip.groups()[1][:2] == [1, 0]


@pytest.mark.parametrize("pool", list(POOLS))
def test_a_piece_does_not_depend_on_its_block(pool: str) -> None:
    """Anchors fitted one at a time give the pieces of the batched fit (in float32 the thin direction
    of the seed 15's piece is kept whatever the other anchors' candidates are)."""
    x = torch.from_numpy(edge_batch(1)).float()
    cfg = ManifoldConfig(criterion="relative_candidate_residual", eps=EDGE_EPS["relative_candidate_residual"],
                         **POOLS[pool])
    together, alone = fit_pieces(x, cfg), fit_pieces(x, cfg, block_size=1)
    assert together.groups() == alone.groups() and together.ranks.tolist() == alone.ranks.tolist()
    assert together.ranks[15] == 2
    torch.testing.assert_close(together.coefficients, alone.coefficients, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("path", PATHS)
def test_duplicates_tie_exactly_in_every_pool(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Equal points come in index order, right after the anchor, whatever the rounding of the Gram matrix."""
    use_path(monkeypatch, path)
    x = torch.from_numpy(edge_batch(2)).float()
    for name, pool in POOLS.items():
        groups = fit_pieces(x, ManifoldConfig(subset_selection=False, **pool)).groups()
        assert groups[20][:5] == [20, 21, 22, 23, 24] and groups[24][:5] == [24, 20, 21, 22, 23]
        if name != "seed group":  # equal points in two groups
            assert groups[3][1] == 26 and groups[26][1] == 3


@pytest.mark.parametrize("pool", list(POOLS))
def test_thread_count_does_not_change_the_result(pool: str) -> None:
    """One and two intra-op threads: the same neighbourhoods and ranks, similarities equal to rounding."""
    x = torch.from_numpy(edge_batch(1))
    cfg = ManifoldConfig(criterion="relative_candidate_residual", eps=EDGE_EPS["relative_candidate_residual"],
                         **POOLS[pool])
    before = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            pieces = fit_pieces(x, cfg)
            out.append((pieces.groups(), pieces.ranks.tolist(), similarity_matrix(x, cfg)))
    finally:
        torch.set_num_threads(before)
    assert out[0][:2] == out[1][:2]
    torch.testing.assert_close(out[0][2], out[1][2], atol=1e-12, rtol=0)


def test_the_gram_path_scores_other_points_like_the_blocks() -> None:
    """Points other than the fitted ones are scored against the pieces in R^d (the Gram matrix
    only knows the fitted points)."""
    x = torch.from_numpy(seed_groups(3))
    cfg = ManifoldConfig(group_size=5)
    pieces = fit_pieces(x, cfg)
    moved = x + 0.05 * torch.from_numpy(np.random.default_rng(4).normal(size=x.shape))
    by_blocks = pairwise_similarity(moved, pieces, cfg)
    assert not torch.allclose(by_blocks, pairwise_similarity(x, pieces, cfg), atol=1e-3)
    monkeypatched = fit_pieces(x, cfg)
    monkeypatched.gram = None  # forces the blocks for the fitted points too
    torch.testing.assert_close(pairwise_similarity(x, monkeypatched, cfg), pairwise_similarity(x, pieces, cfg),
                               atol=1e-12, rtol=0)


def test_pieces_without_coordinates_are_scored_from_their_anchors() -> None:
    """Pieces built by hand with a Gram matrix but no coordinates: the coordinates are taken again
    from the anchors (the same QR), so the similarity is the same."""
    x = torch.from_numpy(seed_groups(5))
    cfg = ManifoldConfig(group_size=5)
    pieces = fit_pieces(x, cfg)
    want = pairwise_similarity(x, pieces, cfg)
    pieces.coordinates = None
    torch.testing.assert_close(pairwise_similarity(x, pieces, cfg), want, atol=1e-14, rtol=0)


def _gram(x: torch.Tensor) -> torch.Tensor:
    """The Gram matrix :func:`fit_pieces` computes: that of the centred points' coordinates."""
    coords = pieces_module.batch_coordinates(x)
    return coords @ coords.T


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 30), st.integers(1, 12), st.lists(st.tuples(st.integers(0, 29), st.integers(0, 29)), max_size=8),
       st.sampled_from([0.0, 1e-3, 1.0, 1e3]), st.integers(0, 2 ** 16))
def test_duplicates_found_from_the_gram_matrix_are_exactly_the_equal_rows(n: int, d: int,
                                                                          copies: list[tuple[int, int]],
                                                                          spread: float, seed: int) -> None:
    """The one-Gram-matrix path compares only near pairs value by value; it must find what
    ``torch.unique`` finds (signed zeros equal, points equal to the batch mean, near misses apart)."""
    g = torch.Generator().manual_seed(seed)
    x = 1.0 + spread * torch.randn(n, d, generator=g)
    for src, dst in copies:
        x[dst % n] = x[src % n]
    if n > 2:
        x[-1] = x[0].clone()
        x[-1, 0] = torch.nextafter(x[0, 0], torch.tensor(float("inf")))  # one ulp away: not equal
    if spread == 0.0:  # every point equal, two of them signed zeros
        x[0], x[n - 1] = 0.0, -0.0
    want = pieces_module.duplicate_representatives(x)
    got = pieces_module._representatives_from_gram(x, _gram(x))
    assert (got is None) == (want is None)
    if want is not None:
        assert got is not None and got.tolist() == want.tolist()
