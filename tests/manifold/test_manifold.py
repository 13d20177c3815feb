"""The PL model: batched code against the explicit-loop reference, properties, geometry, edge cases."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plm.manifold import (
    ManifoldConfig,
    directed_similarity,
    fit_pieces,
    knn_candidates,
    pair_similarity,
    pairwise_similarity,
    similarity_matrix,
    sparse_similarity,
)
from plm.manifold.reference import reference_directed, reference_fit, reference_similarity

SETTINGS = settings(max_examples=25, deadline=None)


def _points(seed: int, n: int, d: int, dtype=torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d))).to(dtype)


# ---------------------------------------------------------------- reference comparison

@pytest.mark.parametrize("criterion", ["residual_variance", "relative_residual"])
@pytest.mark.parametrize("m,eps", [(1, 0.1), (2, 0.05), (2, 0.3), (3, 0.2)])
def test_batched_matches_explicit_loops(criterion: str, m: int, eps: float) -> None:
    x = _points(m * 10 + int(eps * 100), 22, 6)
    cfg = ManifoldConfig(piece_dim=m, eps=eps, criterion=criterion, max_candidates=9)
    ref = reference_fit(x.numpy(), cfg)
    pieces = fit_pieces(x, cfg)
    assert pieces.groups() == [r["members"] for r in ref]
    assert pieces.sizes.tolist() == [len(r["members"]) for r in ref]
    proj = (pieces.bases @ pieces.bases.transpose(1, 2)).numpy()
    proj_ref = np.stack([r["basis"] @ r["basis"].T for r in ref])
    np.testing.assert_allclose(proj, proj_ref, atol=1e-9)
    np.testing.assert_allclose(pieces.means.numpy(), np.stack([r["mean"] for r in ref]), atol=1e-12)
    np.testing.assert_allclose(similarity_matrix(x, cfg).numpy(), reference_similarity(x.numpy(), cfg), atol=1e-9)
    # float32 input: same neighbourhoods here, similarity close
    s32 = similarity_matrix(x.float(), cfg).numpy()
    np.testing.assert_allclose(s32, reference_similarity(x.numpy(), cfg), atol=1e-3)


@pytest.mark.parametrize("symmetrize", ["mean", "max", "min", "geometric"])
def test_options_match_reference(symmetrize: str) -> None:
    x = _points(3, 18, 5)
    for cfg in (ManifoldConfig(symmetrize=symmetrize, n_alpha=2.5, n_beta=0.5, max_candidates=None),
                ManifoldConfig(symmetrize=symmetrize, subset_selection=False, max_candidates=5),
                ManifoldConfig(symmetrize=symmetrize, normalize_inputs=False, eps=0.15)):
        np.testing.assert_allclose(similarity_matrix(x, cfg).numpy(), reference_similarity(x.numpy(), cfg), atol=1e-9)
        assert fit_pieces(x, cfg).groups() == [r["members"] for r in reference_fit(x.numpy(), cfg)]


def test_directed_similarity_matches_formula_for_proxies() -> None:
    rng = np.random.default_rng(1)
    pts = torch.from_numpy(rng.normal(size=(7, 10)))
    loc = torch.from_numpy(rng.normal(size=(4, 10)))
    basis = torch.linalg.qr(torch.from_numpy(rng.normal(size=(4, 10, 3))))[0]
    s = directed_similarity(pts, loc, loc, basis, 4.0, 1.0).numpy()
    for i in range(7):
        for j in range(4):
            want = reference_directed(pts[i].numpy(), loc[j].numpy(), loc[j].numpy(), basis[j].numpy(), 4.0, 1.0)
            assert s[i, j] == pytest.approx(want, abs=1e-10)


def test_directed_similarity_is_differentiable_at_zero_distance() -> None:
    loc = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    basis = torch.linalg.qr(torch.randn(3, 8, 2, dtype=torch.float64))[0]
    s = directed_similarity(loc, loc, loc, basis, 4.0, 1.0)  # every point on its own piece
    s.sum().backward()
    assert torch.isfinite(loc.grad).all()
    assert torch.allclose(torch.diagonal(s), torch.ones(3, dtype=torch.float64), atol=1e-5)


def test_pair_and_sparse_similarity_agree_with_dense() -> None:
    x = _points(5, 60, 8, torch.float32)
    cfg = ManifoldConfig(max_candidates=10)
    dense = similarity_matrix(x, cfg)
    pieces = fit_pieces(x, cfg)
    rows, cols = torch.randint(0, 60, (300,)), torch.randint(0, 60, (300,))
    torch.testing.assert_close(pair_similarity(pieces, rows, cols, cfg), dense[rows, cols], atol=2e-4, rtol=0)
    values, idx = sparse_similarity(x, cfg, k=10)
    assert values.shape == idx.shape == (60, 10)
    assert (values[:, :-1] >= values[:, 1:]).all()  # sorted descending
    torch.testing.assert_close(values, dense.gather(1, idx), atol=2e-4, rtol=0)
    near = knn_candidates(torch.nn.functional.normalize(x, dim=1), 10)[1]
    assert (torch.sort(idx, 1).values == torch.sort(near, 1).values).all()


def test_blocks_do_not_change_the_result() -> None:
    x = _points(6, 50, 7)
    cfg = ManifoldConfig(max_candidates=12)
    a, b = fit_pieces(x, cfg, block_size=7), fit_pieces(x, cfg)
    assert a.groups() == b.groups()
    torch.testing.assert_close(pairwise_similarity(x, a, cfg, block_size=9), pairwise_similarity(x, b, cfg))


@pytest.mark.parametrize("criterion", ["relative_candidate_residual", "residual_variance"])
@pytest.mark.parametrize("k", [6, None])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_global_gram_and_gathered_points_agree(monkeypatch: pytest.MonkeyPatch, criterion: str, k: int | None,
                                               dtype: torch.dtype) -> None:
    """Small sets take their pieces from one Gram matrix of all points, large ones gather each anchor's
    candidates: both give the same pieces."""
    from plm.manifold import pieces as pieces_module

    x = _points(8, 40, 9, dtype)
    cfg = ManifoldConfig(max_candidates=k, criterion=criterion, eps=0.9 if criterion.endswith("residual") else 0.2)
    cand = torch.tensor([[(i + j) % 40 if j != 2 else -1 for j in range(1, 8)] for i in range(40)])
    for supplied in (None, cand):
        a = fit_pieces(x, cfg, candidates=supplied)
        monkeypatch.setattr(pieces_module, "GLOBAL_GRAM_MAX", 0)
        b = fit_pieces(x, cfg, candidates=supplied)
        monkeypatch.undo()
        assert a.groups() == b.groups()
        tol = 1e-9 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(a.means, b.means, atol=tol, rtol=0)
        torch.testing.assert_close(a.bases @ a.bases.transpose(1, 2), b.bases @ b.bases.transpose(1, 2),
                                   atol=tol * 10, rtol=0)
        assert torch.equal(a.ranks, b.ranks)


# ---------------------------------------------------------------- properties

configs = st.builds(
    ManifoldConfig,
    piece_dim=st.integers(1, 3),
    eps=st.sampled_from([0.0, 0.05, 0.2, 0.6]),
    criterion=st.sampled_from(["residual_variance", "relative_residual"]),
    max_candidates=st.sampled_from([None, 3, 8]),
    n_alpha=st.sampled_from([0.0, 2.0, 4.0]),
    n_beta=st.sampled_from([0.0, 1.0]),
    symmetrize=st.sampled_from(["mean", "max", "min", "geometric"]),
    subset_selection=st.booleans(),
)


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(1, 25), d=st.integers(1, 10), cfg=configs)
def test_similarity_in_unit_interval_symmetric_diagonal_one(seed: int, n: int, d: int, cfg: ManifoldConfig) -> None:
    x = _points(seed, n, d, torch.float32) * float(10 ** (seed % 5 - 2))
    s = similarity_matrix(x, cfg)
    assert s.shape == (n, n) and torch.isfinite(s).all()
    assert (s > 0).all() and (s <= 1).all()
    assert torch.equal(s, s.T)
    assert torch.equal(torch.diagonal(s), torch.ones(n))


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(2, 20), d=st.integers(2, 8), cfg=configs)
def test_invariant_to_rigid_motion(seed: int, n: int, d: int, cfg: ManifoldConfig) -> None:
    cfg = dataclasses.replace(cfg, normalize_inputs=False)  # normalisation is not translation invariant
    rng = np.random.default_rng(seed + 1)
    x = _points(seed, n, d)
    rot = torch.from_numpy(np.linalg.qr(rng.normal(size=(d, d)))[0])
    shift = torch.from_numpy(rng.normal(size=d) * 5)
    torch.testing.assert_close(similarity_matrix(x @ rot + shift, cfg), similarity_matrix(x, cfg), atol=1e-6, rtol=0)


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(2, 20), d=st.integers(2, 8), cfg=configs)
def test_equivariant_to_permutation(seed: int, n: int, d: int, cfg: ManifoldConfig) -> None:
    x = _points(seed, n, d)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    s = similarity_matrix(x, cfg)
    torch.testing.assert_close(similarity_matrix(x[perm], cfg), s[perm][:, perm], atol=1e-6, rtol=0)
    # the neighbourhoods are the same sets, relabelled (no distance ties in Gaussian data)
    got = fit_pieces(x[perm], cfg).groups()
    want = fit_pieces(x, cfg).groups()
    assert [sorted(perm[g].tolist()) for g in got] == [sorted(want[int(perm[i])]) for i in range(n)]


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(3, 20), scale=st.floats(1e-3, 1e3))
def test_subset_selection_is_scale_free(seed: int, n: int, scale: float) -> None:
    x = _points(seed, n, 6)
    for criterion in ("residual_variance", "relative_residual"):
        cfg = ManifoldConfig(criterion=criterion, normalize_inputs=False, eps=0.25)
        assert fit_pieces(x * scale, cfg).groups() == fit_pieces(x, cfg).groups()


@SETTINGS
@given(seed=st.integers(0, 10_000), m=st.integers(1, 3), o1=st.floats(0.0, 3.0), gap=st.floats(1e-3, 3.0),
       n_alpha=st.floats(0.5, 8.0), n_beta=st.floats(0.0, 2.0))
def test_decreasing_in_orthogonal_distance(seed: int, m: int, o1: float, gap: float, n_alpha: float,
                                           n_beta: float) -> None:
    rng = np.random.default_rng(seed)
    d = m + 3
    frame = np.linalg.qr(rng.normal(size=(d, d)))[0]
    basis, normal = torch.from_numpy(frame[:, :m])[None], torch.from_numpy(frame[:, m])
    mean = torch.from_numpy(rng.normal(size=(1, d)))
    anchor = mean + (basis[0] @ torch.from_numpy(rng.normal(size=m)))[None]
    inside = mean[0] + basis[0] @ torch.from_numpy(rng.normal(size=m))  # fixed in-piece position
    pts = torch.stack([inside + o1 * normal, inside + (o1 + gap) * normal])
    s = directed_similarity(pts, anchor, mean, basis, n_alpha, n_beta)[:, 0]
    assert s[0] > s[1]


# ---------------------------------------------------------------- geometry

def _crossing(dim: int, per_axis: np.ndarray, flat_dim: int,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two flats of dimension ``flat_dim`` crossing at one point of R^dim, sampled on a grid.

    Returns (points, flat id of each point, the crossing point).
    """
    rng = np.random.default_rng(seed)
    frame = np.linalg.qr(rng.normal(size=(dim, 2 * flat_dim)))[0]
    crossing = rng.normal(size=dim)
    grid = np.stack(np.meshgrid(*[per_axis] * flat_dim, indexing="ij"), -1).reshape(-1, flat_dim)
    a = grid @ frame[:, :flat_dim].T
    b = grid[np.abs(grid).sum(1) > 0] @ frame[:, flat_dim:].T  # the crossing point once only
    return np.concatenate([a, b]) + crossing, np.r_[np.zeros(len(a), int), np.ones(len(b), int)], crossing


@pytest.mark.parametrize("flat_dim,axis,far", [(1, np.round(np.arange(-1.0, 1.0001, 0.05), 10), 0.25),
                                               (2, np.round(np.arange(-1.0, 1.0001, 0.2), 10), 0.5)])
@pytest.mark.parametrize("criterion,eps", [("residual_variance", 0.01), ("relative_candidate_residual", 1.2)])
def test_same_flat_beats_across_flats_at_equal_distance(flat_dim: int, axis: np.ndarray, far: float, criterion: str,
                                                        eps: float) -> None:
    """Lines (planes) crossing in 64-D: at equal Euclidean distance, same-flat pairs score higher."""
    x, flat, crossing = _crossing(64, axis, flat_dim)
    cfg = ManifoldConfig(piece_dim=flat_dim, eps=eps, criterion=criterion, max_candidates=16, normalize_inputs=False)
    s = similarity_matrix(torch.from_numpy(x), cfg).numpy()
    dist = np.round(np.linalg.norm(x[:, None] - x[None], axis=2), 6)
    away = np.linalg.norm(x - crossing, axis=1) >= far  # pieces at the crossing may mix the flats
    iu = np.triu_indices(len(x), 1)
    same = flat[iu[0]] == flat[iu[1]]
    ok = away[iu[0]] & away[iu[1]]
    d_pairs, s_pairs = dist[iu], s[iu]
    compared = 0
    for dval in np.unique(d_pairs[ok & ~same]):
        cross = ok & ~same & (d_pairs == dval)
        within = ok & same & (d_pairs == dval)
        if within.any():
            assert s_pairs[within].min() > s_pairs[cross].max(), f"distance {dval}"
            compared += 1
    assert compared >= 3
    # a Gaussian kernel is a function of the distance: it scores such pairs identically
    gauss = np.exp(-d_pairs / 0.5)
    assert all(np.ptp(gauss[ok & (d_pairs == dval)]) == 0 for dval in np.unique(d_pairs[ok & ~same]))


# ---------------------------------------------------------------- degenerate inputs and validation

@pytest.mark.parametrize("x", [torch.zeros(5, 4), torch.ones(3, 7), torch.randn(2, 3), torch.randn(1, 3),
                               torch.randn(3, 5).repeat(4, 1), torch.zeros(0, 4), torch.randn(6, 1)])
def test_degenerate_inputs_give_defined_results(x: torch.Tensor) -> None:
    for cfg in (ManifoldConfig(), ManifoldConfig(criterion="relative_residual", piece_dim=3),
                ManifoldConfig(normalize_inputs=False, subset_selection=False)):
        pieces = fit_pieces(x, cfg)
        s = similarity_matrix(x, cfg)
        assert s.shape == (len(x), len(x))
        assert torch.isfinite(s).all() and (s > 0).all() and (s <= 1).all()
        assert torch.isfinite(pieces.bases).all() and torch.isfinite(pieces.means).all()
        gram = pieces.bases.transpose(1, 2) @ pieces.bases
        rank = pieces.ranks
        for i in range(len(x)):
            r = int(rank[i])
            torch.testing.assert_close(gram[i, :r, :r], torch.eye(r), atol=1e-5, rtol=0)
            assert (pieces.bases[i, :, r:] == 0).all()
            assert r <= min(cfg.piece_dim, int(pieces.sizes[i]) - 1)


def test_duplicates_are_interchangeable() -> None:
    x = torch.randn(4, 6, dtype=torch.float64).repeat(3, 1)  # points i, i+4, i+8 coincide
    s = similarity_matrix(x)
    off = ~torch.eye(12, dtype=torch.bool)
    for i in range(4):
        for j in (i + 4, i + 8):
            keep = off[i] & off[j]
            torch.testing.assert_close(s[i, keep], s[j, keep])
    assert torch.isfinite(s).all() and (s > 0).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_input_is_rejected(bad: float) -> None:
    x = torch.randn(5, 3)
    x[2, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        similarity_matrix(x)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="2-D"):
        similarity_matrix(torch.randn(5))
    with pytest.raises(ValueError, match="floating-point"):
        similarity_matrix(torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="candidate indices"):
        fit_pieces(torch.randn(5, 3), candidates=torch.tensor([[9]] * 5))
    with pytest.raises(ValueError, match="candidates must be"):
        fit_pieces(torch.randn(5, 3), candidates=torch.tensor([[1]] * 4))
    with pytest.raises(ValueError, match="fitted on"):
        pairwise_similarity(torch.randn(4, 3), fit_pieces(torch.randn(5, 3)))


@pytest.mark.parametrize("kwargs", [dict(piece_dim=0), dict(piece_dim=1.5), dict(eps=-0.1), dict(eps=float("nan")),
                                    dict(criterion="nope"), dict(max_candidates=0), dict(n_alpha=-1),
                                    dict(n_beta=float("inf")), dict(symmetrize="median"), dict(subset_selection=1)])
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ManifoldConfig(**kwargs)


def test_candidates_with_padding_and_self() -> None:
    x = torch.randn(6, 4, dtype=torch.float64)
    cand = torch.tensor([[1, -1, 2], [0, 1, 3], [3, 4, -1], [2, 4, 5], [5, 3, 2], [4, -1, -1]])
    pieces = fit_pieces(x, ManifoldConfig(max_candidates=None), candidates=cand)
    for i, g in enumerate(pieces.groups()):
        assert g[0] == i and len(set(g)) == len(g) and all(j in cand[i].tolist() for j in g[1:])


def test_no_gradient_flows_and_input_untouched() -> None:
    x = torch.randn(30, 8, requires_grad=True)
    before = x.detach().clone()
    s = similarity_matrix(x)
    assert not s.requires_grad
    assert torch.equal(x.detach(), before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_runs_on_gpu_like_on_cpu() -> None:
    x = _points(2, 120, 64, torch.float32)
    cfg = ManifoldConfig()
    torch.testing.assert_close(similarity_matrix(x.cuda(), cfg).cpu(), similarity_matrix(x, cfg), atol=1e-4, rtol=0)
