"""The reconstructed PL options (candidate criteria, on_breach, normalisation, loss kinds, proxies on
the sphere) against explicit-loop references and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plm.losses import LossConfig, PLMConfig, ProxyBank, ProxyConfig
from plm.losses.functional import Rows, balanced_pair_weights, proxy_contrastive_loss
from plm.manifold import ManifoldConfig, fit_pieces, normalize_similarity, similarity_matrix
from plm.manifold.reference import reference_fit, reference_normalize, reference_similarity


def _points(seed: int, n: int, d: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d)))


@pytest.mark.parametrize("criterion,eps", [("candidate_residual", 0.4), ("candidate_residual", 0.8),
                                           ("relative_candidate_residual", 0.9),
                                           ("relative_candidate_residual", 1.5)])
@pytest.mark.parametrize("on_breach", ["skip", "stop"])
@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("k", [10, None])
def test_candidate_criteria_match_explicit_loops(criterion: str, eps: float, on_breach: str, m: int,
                                                 k: int | None) -> None:
    x = _points(m * 7 + int(eps * 10), 24, 6)
    cfg = ManifoldConfig(piece_dim=m, eps=eps, criterion=criterion, on_breach=on_breach, max_candidates=k)
    ref = reference_fit(x.numpy(), cfg)
    pieces = fit_pieces(x, cfg)
    assert pieces.groups() == [r["members"] for r in ref]
    for i, r in enumerate(ref):
        np.testing.assert_allclose(pieces.means[i].numpy(), r["mean"], atol=1e-9)


@pytest.mark.parametrize("criterion,eps", [("relative_candidate_residual", 1.5), ("candidate_residual", 0.6),
                                           ("residual_variance", 0.2)])
@pytest.mark.parametrize("subset_selection", [True, False])
def test_seed_group_candidates_match_explicit_loops(criterion: str, eps: float, subset_selection: bool) -> None:
    x = _points(11, 30, 5)
    cfg = ManifoldConfig(eps=eps, criterion=criterion, group_size=6, subset_selection=subset_selection)
    ref = reference_fit(x.numpy(), cfg)
    pieces = fit_pieces(x, cfg)
    assert pieces.groups() == [r["members"] for r in ref]
    assert all(j // 6 == i // 6 for i, g in enumerate(pieces.groups()) for j in g)
    np.testing.assert_allclose(similarity_matrix(x, cfg).numpy(), reference_similarity(x.numpy(), cfg), atol=1e-9)
    with pytest.raises(ValueError, match="group_size"):
        fit_pieces(x[:29], cfg)
    with pytest.raises(ValueError, match="not both"):
        fit_pieces(x, cfg, candidates=torch.zeros(30, 2, dtype=torch.long))


@pytest.mark.parametrize("m", [1, 2, 3])
def test_candidate_residual_matches_the_reference(m: int) -> None:
    from plm.manifold import candidate_residual
    from plm.manifold.reference import reference_candidate_residual

    rng = np.random.default_rng(m)
    for size in (1, 2, 4, 7):
        pts = rng.normal(size=(5, size + 1, 6))  # per row: anchor, members, candidate last
        z = torch.from_numpy(pts - pts[:, :1])
        w = torch.zeros(5, size + 1, dtype=torch.float64)
        w[:, :size] = 1.0
        got = candidate_residual(z @ z.transpose(1, 2), w, m).numpy()
        want = [reference_candidate_residual(p[:size], p[size], m) for p in pts]
        np.testing.assert_allclose(got, want, atol=1e-9)


def test_stop_never_grows_past_the_first_rejection() -> None:
    x = _points(3, 40, 8)
    skip = fit_pieces(x, ManifoldConfig(criterion="candidate_residual", eps=0.6, on_breach="skip"))
    stop = fit_pieces(x, ManifoldConfig(criterion="candidate_residual", eps=0.6, on_breach="stop"))
    assert (stop.sizes <= skip.sizes).all() and (stop.sizes < skip.sizes).any()


def _line_with_far_point() -> torch.Tensor:
    """An anchor with five neighbours along a line (spacing 0.1, slight noise) and one point far off
    the line, nearer than the line's last points would be if it were on it."""
    t = torch.tensor([0.0, 0.1, -0.1, 0.2, -0.2, 0.3], dtype=torch.float64)
    line = torch.zeros(6, 4, dtype=torch.float64)
    line[:, 0] = t
    line[:, 1] = torch.tensor([0.0, 0.01, -0.01, 0.005, 0.0, -0.005])
    far = torch.tensor([[0.15, 0.0, 0.0, 0.25]], dtype=torch.float64)  # nearer than t = 0.3, far off the line
    return torch.cat([line, far])


def test_candidate_criterion_rejects_a_far_point_the_set_criteria_accept() -> None:
    x = _line_with_far_point()
    far = 6
    base = dict(piece_dim=1, max_candidates=6, normalize_inputs=False)
    accepted_by = {}
    for criterion, eps in [("residual_variance", 0.5), ("relative_residual", 0.5),
                           ("candidate_residual", 0.05), ("relative_candidate_residual", 0.5)]:
        groups = fit_pieces(x, ManifoldConfig(criterion=criterion, eps=eps, **base)).groups()
        accepted_by[criterion] = far in groups[0]
        assert set(range(6)) <= set(groups[0]), criterion  # the line is always selected
    assert accepted_by == {"residual_variance": True, "relative_residual": True,
                           "candidate_residual": False, "relative_candidate_residual": False}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 12), how=st.sampled_from(["none", "row_max", "row_minmax",
                                                                               "row_rank"]),
       ties=st.booleans())
def test_normalization_matches_explicit_loops(seed: int, n: int, how: str, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.05, 0.9, size=(n, n))
    if ties:
        a = np.round(a, 1)
    s = 0.5 * (a + a.T)
    np.fill_diagonal(s, 1.0)
    out = normalize_similarity(torch.from_numpy(s), how).numpy()
    np.testing.assert_allclose(out, reference_normalize(s, how), atol=1e-12)
    assert np.allclose(out, out.T) and np.allclose(np.diag(out), 1.0)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_similarity_matrix_applies_the_normalization() -> None:
    x = _points(0, 30, 8)
    plain = similarity_matrix(x, ManifoldConfig())
    minmax = similarity_matrix(x, ManifoldConfig(normalization="row_minmax"))
    torch.testing.assert_close(minmax, normalize_similarity(plain, "row_minmax"))


def test_balanced_pair_weights_by_loops() -> None:
    rng = np.random.default_rng(1)
    b, r0, rows = 7, 2, 3
    t = rng.uniform(size=(rows, b))
    w = balanced_pair_weights(torch.from_numpy(t), Rows(start=r0)).numpy()
    for i in range(rows):
        off = [j for j in range(b) if j != r0 + i]
        pos = sum(t[i, j] for j in off)
        neg = sum(1 - t[i, j] for j in off)
        for j in range(b):
            want = 0.0 if j == r0 + i else 0.5 * (t[i, j] / pos + (1 - t[i, j]) / neg) * (b - 1)
            assert w[i, j] == pytest.approx(want)
        assert np.mean([w[i, j] for j in off]) == pytest.approx(1.0)


def test_proxy_contrastive_loss_by_loops() -> None:
    rng = np.random.default_rng(2)
    z, rho, w = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)), rng.uniform(size=(4, 5))
    got = proxy_contrastive_loss(torch.from_numpy(z), torch.from_numpy(rho), torch.from_numpy(w), delta=1.0).item()
    total = 0.0
    for i in range(4):
        d = [float(np.linalg.norm(z[i] - rho[k])) for k in range(5)]
        mean = sum(d) / 5
        for k in range(5):
            dn = d[k] / mean
            total += w[i, k] * dn ** 2 + (1 - w[i, k]) * max(1.0 - dn, 0.0) ** 2
    assert got == pytest.approx(total / 20)


def test_proxies_start_and_stay_on_the_sphere() -> None:
    from plm.training.methods import BatchView, PLMMethod

    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(200, 8), dim=1)
    config = PLMConfig(ManifoldConfig(), LossConfig(kind="relaxed_contrastive"), ProxyConfig(on_sphere=True))
    method = PLMMethod(8, config, num_proxies=6)
    method.prepare(emb)
    assert torch.allclose(method.proxies.locations.norm(dim=1), torch.ones(6), atol=1e-5)
    opt = torch.optim.SGD(method.parameters(), lr=0.5)
    for _ in range(5):
        z = torch.nn.functional.normalize(torch.randn(20, 8, requires_grad=True), dim=1)
        terms = method(BatchView(z, z, z.detach(), torch.arange(20)))
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    assert torch.allclose(method.proxy_locations().norm(dim=1), torch.ones(6), atol=1e-6)


def test_proxy_bases_are_tangent_on_the_sphere() -> None:
    emb = torch.nn.functional.normalize(torch.randn(300, 6, generator=torch.Generator().manual_seed(3)), dim=1)
    bank = ProxyBank(5, 6, piece_dim=2)
    bank.init_from_embeddings(emb, on_sphere=True, seed=0)
    w = bank.orthonormal_bases()
    radial = torch.einsum("kd,kdm->km", bank.locations.detach(), w)
    assert radial.abs().max() < 1e-5
