"""Loss terms against explicit Python loops over pairs, on small random geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plm.losses.functional import (
    Rows,
    contrastive_loss,
    neighborhood_loss,
    pairwise_distance,
    point_loss,
    proxy_loss,
    relaxed_contrastive_loss,
)


def _dist(a, b) -> float:
    return math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(a, b, strict=True)))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(7, 3, generator=g, dtype=torch.float64), dim=1)
    s = torch.rand(7, 7, generator=g, dtype=torch.float64)
    s = (s + s.T) / 2
    s.fill_diagonal_(1.0)
    return z, s


def test_point_loss_matches_loop(batch) -> None:
    z, s = batch
    delta = 1.3
    ref, n = 0.0, 0
    for i in range(len(z)):
        for j in range(len(z)):
            if i != j:
                ref += (delta * (1 - float(s[i, j])) - _dist(z[i], z[j])) ** 2
                n += 1
    assert float(point_loss(z, s, delta)) == pytest.approx(ref / n, rel=1e-10)


def test_point_loss_row_shards_add_up(batch) -> None:
    """Each rank's rows with the global pair count sum to the global loss (distributed contract)."""
    z, s = batch
    full = point_loss(z, s, 1.5)
    b = len(z)
    parts = [point_loss(z[a:e], s[a:e], 1.5, columns=z, rows=Rows.of_process(a, b))
             for a, e in ((0, 3), (3, 5), (5, 7))]
    assert float(sum(parts)) == pytest.approx(float(full), rel=1e-10)


def test_proxy_loss_matches_loop(batch) -> None:
    z, _ = batch
    g = torch.Generator().manual_seed(1)
    rho = torch.randn(4, 3, generator=g, dtype=torch.float64)
    s = torch.rand(7, 4, generator=g, dtype=torch.float64)
    ref = sum((1.5 * (1 - float(s[i, k])) - _dist(z[i], rho[k])) ** 2 for i in range(7) for k in range(4)) / 28
    assert float(proxy_loss(z, rho, s, 1.5)) == pytest.approx(ref, rel=1e-10)


def test_neighbourhood_loss_matches_loop() -> None:
    g = torch.Generator().manual_seed(2)
    pts = torch.randn(9, 4, generator=g, dtype=torch.float64)
    rho = torch.randn(3, 4, generator=g, dtype=torch.float64)
    w = torch.linalg.qr(torch.randn(3, 4, 2, generator=g, dtype=torch.float64)).Q
    sim = torch.rand(9, 3, generator=g, dtype=torch.float64)
    n, lam = 3, 0.5
    ref, count = 0.0, 0
    for k in range(3):
        order = sorted(range(9), key=lambda i: -float(sim[i, k]))[:n]
        for i in order:
            r = (pts[i] - rho[k]).numpy()
            basis = w[k].numpy()
            orth = r - basis @ (basis.T @ r)
            ref += float(orth @ orth) + lam * float(r @ r)
            count += 1
    assert float(neighborhood_loss(pts, rho, w, sim, n=n, lam=lam)) == pytest.approx(ref / count, rel=1e-10)


def test_neighbourhood_loss_gradient_reaches_proxies_only() -> None:
    g = torch.Generator().manual_seed(3)
    pts = torch.randn(6, 4, generator=g).requires_grad_()
    rho = torch.randn(2, 4, generator=g).requires_grad_()
    raw = torch.randn(2, 4, 2, generator=g).requires_grad_()
    loss = neighborhood_loss(pts, rho, torch.linalg.qr(raw).Q, torch.rand(6, 2, generator=g), n=2)
    loss.backward()
    assert pts.grad is None and rho.grad is not None and raw.grad is not None
    assert torch.isfinite(raw.grad).all()


@pytest.mark.parametrize("normalize_rows", [True, False])
def test_relaxed_contrastive_matches_loop(batch, normalize_rows) -> None:
    z, w = batch
    b, delta = len(z), 1.0
    d = [[_dist(z[i], z[j]) if i != j else 0.0 for j in range(b)] for i in range(b)]
    if normalize_rows:
        d = [[v / (sum(row) / b) for v in row] for row in d]
    ref = 0.0
    for i in range(b):
        for j in range(b):
            if i != j:
                wij = float(w[i, j])
                ref += wij * d[i][j] ** 2 + (1 - wij) * max(0.0, delta - d[i][j]) ** 2
    got = relaxed_contrastive_loss(z, w, delta, normalize_rows=normalize_rows)
    assert float(got) == pytest.approx(ref / (b * (b - 1)), rel=1e-10)


def test_contrastive_loss_is_unnormalised_relaxed(batch) -> None:
    z, _ = batch
    y = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    target = (y[:, None] == y[None]).double()
    ref = 0.0
    for i in range(7):
        for j in range(7):
            if i != j:
                dij = _dist(z[i], z[j])
                ref += dij ** 2 if y[i] == y[j] else max(0.0, 0.8 - dij) ** 2
    assert float(contrastive_loss(z, target, margin=0.8)) == pytest.approx(ref / 42, rel=1e-10)


def test_relaxed_contrastive_row_shards_add_up(batch) -> None:
    z, w = batch
    full = relaxed_contrastive_loss(z, w)
    parts = [relaxed_contrastive_loss(z[a:e], w[a:e], columns=z, rows=Rows.of_process(a, 7))
             for a, e in ((0, 4), (4, 7))]
    assert float(sum(parts)) == pytest.approx(float(full), rel=1e-10)


def test_duplicates_give_finite_gradients() -> None:
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    s = torch.ones(3, 3)
    losses = (point_loss(z, s), relaxed_contrastive_loss(z, s), proxy_loss(z, z.detach()[:2], torch.ones(3, 2)))
    for loss in losses:
        z.grad = None
        loss.backward()
        assert torch.isfinite(z.grad).all()


def test_perfect_geometry_has_zero_point_loss() -> None:
    """Points whose distances are exactly δ(1 − s) give L_point = 0."""
    z = torch.tensor([[0.0, 0.0], [0.6, 0.0], [0.0, 0.9]], dtype=torch.float64)
    d = pairwise_distance(z, z)
    s = 1 - d / 1.5
    assert float(point_loss(z, s, 1.5)) == pytest.approx(0.0, abs=1e-12)


def test_shape_errors_are_clear() -> None:
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="target must be"):
        point_loss(z, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="rows.start"):
        point_loss(z[:2], torch.zeros(2, 3), columns=z, rows=Rows(start=2))
    with pytest.raises(ValueError, match="n must be positive"):
        neighborhood_loss(z, z[:1], torch.zeros(1, 2, 1), torch.zeros(3, 1), n=0)


def test_pairwise_distance_matches_cdist() -> None:
    a, b = np.random.default_rng(0).normal(size=(2, 5, 3))
    got = pairwise_distance(torch.tensor(a), torch.tensor(b))
    assert torch.allclose(got, torch.cdist(torch.tensor(a), torch.tensor(b)), atol=1e-6)
