"""The proxies' coordinates (no (K, d, m) orthonormal bases formed) against the bases themselves.

:meth:`ProxyBank.coordinates` gives ‖x_i − ρ_k‖² and W_kᵀ(x_i − ρ_k) with W_k = Gram-Schmidt of the
raw bases, read through the Cholesky factor of their Gram matrix; the proxies' similarity and the
neighbourhood term of :class:`PLMLoss` are computed from them. Both must equal the building blocks
(:meth:`ProxyBank.orthonormal_bases`, :func:`directed_similarity`, :func:`neighborhood_loss`), values
and gradients, including the fallback for a basis whose columns are dependent.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from plm.losses import PLMLoss, ProxyBank
from plm.losses.config import LossConfig, PLMConfig, ProxyConfig
from plm.losses.functional import neighborhood_loss, neighborhood_loss_from_coordinates
from plm.manifold import directed_similarity


def _bank(k: int, d: int, m: int, seed: int, dtype: torch.dtype) -> tuple[ProxyBank, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    bank = ProxyBank(k, d, m, seed=seed).to(dtype)
    with torch.no_grad():  # raw bases away from orthonormal: scaled and sheared columns
        bank.bases.copy_(torch.randn(k, d, m, generator=g, dtype=dtype) * torch.rand(k, 1, m, generator=g, dtype=dtype)
                         + 0.1)
    points = F.normalize(torch.randn(9, d, generator=g, dtype=dtype), dim=1)
    rho = F.normalize(bank.locations, dim=1)
    return bank, points, rho


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 6), d=st.integers(3, 12), m=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_coordinates_equal_the_orthonormal_bases(k: int, d: int, m: int, seed: int) -> None:
    bank, points, rho = _bank(k, d, min(m, d), seed, torch.float64)
    dist2, coords = bank.coordinates(points, rho)
    w = bank.orthonormal_bases()
    r = points[:, None, :] - rho[None]  # (P, K, d)
    torch.testing.assert_close(dist2, r.pow(2).sum(2), atol=1e-12, rtol=0)
    torch.testing.assert_close(coords, torch.einsum("pkd,kdm->pkm", r, w), atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("radius", [None, 1.2])
def test_neighbourhood_term_and_gradients_equal_the_building_blocks(dtype: torch.dtype, tol: float,
                                                                    radius: float | None) -> None:
    values, grads = [], []
    for path in ("coordinates", "bases"):
        bank, points, rho = _bank(5, 16, 2, 3, dtype)
        if path == "coordinates":
            dist2, coords = bank.coordinates(points, rho)
            c2 = coords.detach().pow(2).sum(2)
            from plm.manifold.similarity import alpha_beta

            sim = alpha_beta(dist2.detach() - c2, c2, 2.0, 0.5)
            loss = neighborhood_loss_from_coordinates(dist2, coords, sim, 3, 0.5, radius=radius)
        else:
            w = bank.orthonormal_bases()
            sim = directed_similarity(points, rho, rho, w, 2.0, 0.5).detach()
            loss = neighborhood_loss(points, rho, w, sim, 3, 0.5, radius=radius)
        loss.backward()
        values.append((sim, loss.detach()))
        grads.append((bank.locations.grad, bank.bases.grad))
    torch.testing.assert_close(values[0][0], values[1][0], atol=tol, rtol=0)
    torch.testing.assert_close(values[0][1], values[1][1], atol=tol, rtol=tol)
    for got, want in zip(grads[0], grads[1], strict=True):
        assert got is not None and want is not None
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def test_dependent_columns_fall_back_to_the_bases() -> None:
    bank, points, rho = _bank(3, 8, 2, 5, torch.float64)
    with torch.no_grad():
        bank.bases[1, :, 1] = 2.0 * bank.bases[1, :, 0]  # no Cholesky factor for proxy 1
    dist2, coords = bank.coordinates(points, rho)
    w = bank.orthonormal_bases()
    want = torch.einsum("pkd,kdm->pkm", points[:, None, :] - rho[None], w)
    torch.testing.assert_close(coords, want, atol=1e-10, rtol=0)
    assert torch.isfinite(coords).all()


def test_coordinates_refuse_wrong_shapes() -> None:
    bank, points, rho = _bank(3, 8, 2, 0, torch.float64)
    with pytest.raises(ValueError, match="locations"):
        bank.coordinates(points[:, :4], rho)
    with pytest.raises(ValueError, match="coordinates"):
        neighborhood_loss_from_coordinates(torch.zeros(4, 3), torch.zeros(4, 2, 2), torch.zeros(4, 3))


def test_plm_loss_proxy_similarity_equals_directed_similarity() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(20, 6, generator=g)
    loss = PLMLoss(PLMConfig(loss=LossConfig(context=0.0), proxies=ProxyConfig(num=4)), embed_dim=6, seed=0)
    loss.init_proxies(t)
    rho, w = loss.proxy_locations(), loss.proxies.orthonormal_bases()
    want = directed_similarity(F.normalize(t, dim=1), rho, rho, w, 2.0, 0.5)
    torch.testing.assert_close(loss.proxy_similarity(t), want.detach(), atol=2e-6, rtol=0)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_basis_products_backward_passes_gradcheck(m: int) -> None:
    """The hand-written backward of the bases' products (one (K, d, m) gradient buffer) against
    finite differences, every input with a gradient."""
    from plm.losses.proxies import _BasisProducts

    g = torch.Generator().manual_seed(m)
    points = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    locations = torch.randn(3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    bases = torch.randn(3, 7, m, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_BasisProducts.apply, (points, locations, bases))
    gram, at_points, at_locations = _BasisProducts.apply(points, locations, bases)
    torch.testing.assert_close(gram, bases.transpose(1, 2) @ bases)
    torch.testing.assert_close(at_points, torch.einsum("pd,kdm->pkm", points, bases))
    torch.testing.assert_close(at_locations, torch.einsum("kd,kdm->km", locations, bases))
