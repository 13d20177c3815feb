"""Training building blocks: EMA teacher, proxies, methods, optimiser schedule, checkpoint RNG."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plm.losses import LossConfig, PLMConfig, ProxyBank, ProxyConfig
from plm.manifold import ManifoldConfig, directed_similarity, fit_pieces, similarity_matrix
from plm.training.checkpoint import rng_state, set_rng_state
from plm.training.ema import EMATeacher
from plm.training.methods import (
    METHODS,
    BatchView,
    KMeansMethod,
    Method,
    PLMMethod,
    STMLMethod,
    binary_piece_similarity,
    build_method,
)
from plm.training.optim import lr_factor


def test_ema_update_formula() -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = EMATeacher(student, momentum=0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student(torch.randn(4, 3))  # changes BN running stats
    ema.update(student)
    for name, p in student.named_parameters():
        expected = 0.9 * before[name] + 0.1 * p
        assert torch.allclose(dict(ema.module.named_parameters())[name], expected)
    assert torch.equal(ema.module[1].running_mean, student[1].running_mean)
    assert not any(p.requires_grad for p in ema.parameters())
    ema.train()
    assert not ema.module.training


def test_ema_momentum_extremes_and_validation() -> None:
    student = nn.Linear(2, 2)
    keep, copy = EMATeacher(student, 1.0), EMATeacher(student, 0.0)
    w0 = student.weight.detach().clone()
    with torch.no_grad():
        student.weight.mul_(3)
    keep.update(student)
    copy.update(student)
    assert torch.equal(keep.module.weight, w0) and torch.equal(copy.module.weight, student.weight)
    with pytest.raises(ValueError, match="momentum"):
        EMATeacher(student, 1.5)


def test_proxy_bank_init_and_bases() -> None:
    rng = np.random.default_rng(0)
    # three 2-D planes in 6-D
    x = np.concatenate([c + rng.normal(size=(60, 2)) @ b for c, b in
                        ((rng.normal(size=6) * 3, rng.normal(size=(2, 6))) for _ in range(3))]).astype(np.float32)
    bank = ProxyBank(3, 6, piece_dim=2)
    bank.init_from_embeddings(x, method="kmeans", local_points=30, seed=0)
    w = bank.orthonormal_bases()
    assert torch.allclose(w.transpose(1, 2) @ w, torch.eye(2).expand(3, 2, 2), atol=1e-5)
    # each proxy's plane fits its nearest points: residuals tiny relative to spread
    d = torch.cdist(torch.from_numpy(x), bank.locations.detach())
    for k in range(3):
        pts = torch.from_numpy(x)[d[:, k].argsort()[:20]] - bank.locations[k].detach()
        resid = pts - pts @ w[k].detach() @ w[k].detach().T
        assert resid.norm(dim=1).mean() < 0.05 * pts.norm(dim=1).mean()
    with pytest.raises(ValueError, match="at least as many"):
        ProxyBank(10, 6).init_from_embeddings(x[:5])
    with pytest.raises(ValueError, match="piece_dim"):
        ProxyBank(2, 2, piece_dim=3)


def _batch(b: int = 24, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = F.normalize(torch.randn(b, d, generator=g), dim=1)
    z = F.normalize(t + 0.1 * torch.randn(b, d, generator=g), dim=1).requires_grad_()
    return z, t


def test_plm_method_equals_its_loss_terms() -> None:
    """The method's total is w_point·L_point + w_proxy·L_proxy + w_neigh·L_neigh on explicit inputs."""
    from plm.losses.functional import neighborhood_loss, point_loss, proxy_loss

    z, t = _batch()
    cfg = ManifoldConfig()
    # the PL similarity as the target (the contextual lift is checked against its loop reference in tests/losses)
    loss = LossConfig(delta=1.5, point=1.0, proxy=0.5, neighbourhood=2.0, kind="regression", context=0)
    m = PLMMethod(8, PLMConfig(cfg, loss, ProxyConfig(on_sphere=False)), num_proxies=4, seed=0)
    m.prepare(t)
    out = m(BatchView(z, z, t, torch.arange(len(z))))
    s = similarity_matrix(t, cfg)
    w = m.proxies.orthonormal_bases()
    sp = directed_similarity(t, m.proxies.locations, m.proxies.locations, w, cfg.n_alpha, cfg.n_beta).detach()
    lp = point_loss(z, s, 1.5)
    lx = proxy_loss(z, m.proxies.locations, sp, 1.5)
    ln = neighborhood_loss(t, m.proxies.locations, w, sp, 4, 0.5)
    assert out["loss"].item() == pytest.approx((lp + 0.5 * lx + 2.0 * ln).item(), rel=1e-5)
    out["loss"].backward()
    assert m.proxies.locations.grad is not None and m.proxies.bases.grad is not None


def test_plm_ablations() -> None:
    z, t = _batch()
    no_proxies = PLMMethod(8, PLMConfig(ManifoldConfig()), num_proxies=0)
    assert set(no_proxies(BatchView(z, z, t, torch.arange(24)))) == {"point", "loss"}
    binary = PLMMethod(8, PLMConfig(ManifoldConfig(), LossConfig(context=0), similarity="binary"), num_proxies=0)
    s = binary.target_similarity(t)
    assert set(s.unique().tolist()) <= {0.0, 1.0} and torch.equal(s, s.T)
    # with the default contextual lift the binary similarity is the PL similarity it replaces: pairs only rise
    lifted = PLMMethod(8, PLMConfig(ManifoldConfig(), similarity="binary"), num_proxies=0).target_similarity(t)
    assert torch.all(lifted >= s) and torch.all(lifted[s == 1] == 1) and torch.any(lifted > s)
    pieces = fit_pieces(t, ManifoldConfig())
    for i, group in enumerate(pieces.groups()):
        assert all(s[i, j] == 1 for j in group)


def test_binary_piece_similarity_small() -> None:
    members = torch.tensor([[0, 1, -1], [1, -1, -1], [2, 0, -1]])
    s = binary_piece_similarity(members, 3)
    assert s.tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 1]]


def test_stml_method_uses_the_estimator_target() -> None:
    from plm.estimators import stml_similarity

    _, t = _batch(30, 6, seed=4)
    assert torch.allclose(STMLMethod(sigma=2.0, k=4).target_similarity(t), stml_similarity(t, 2.0, 4))


def test_stml_and_kmeans_methods_run() -> None:
    z, t = _batch()
    out = STMLMethod()(BatchView(z, z, t, torch.arange(24)))
    out["loss"].backward()
    km = KMeansMethod(num_clusters=3, seed=0)
    km.on_epoch_start(t, epoch=0)
    assert km.pseudo_labels.shape == (24,)
    s = km.target_similarity(t, torch.arange(24))
    assert torch.equal(s, (km.pseudo_labels[:, None] == km.pseudo_labels[None]).float())
    km2 = KMeansMethod(num_clusters=3)
    km2.load_state_dict(km.state_dict())
    assert torch.equal(km2.pseudo_labels, km.pseudo_labels)


def test_lr_schedule() -> None:
    assert lr_factor(0, 100, 10) == pytest.approx(1 / 11)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(50, 100, 0, "constant") == 1.0


def test_rng_state_roundtrip_through_safe_load(tmp_path) -> None:
    from plm.utils.io import atomic_torch_save, safe_torch_load

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    atomic_torch_save({"rng": rng_state()}, tmp_path / "r.pt")
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(safe_torch_load(tmp_path / "r.pt")["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_builds_from_its_section_and_trains(name: str) -> None:
    """Driven by the registry's names: a method built from a training config's own section runs its hooks,
    returns a finite total with a gradient, round-trips its state and sizes itself to a small set."""
    from plm.training import default_config

    config = default_config("digits", method=name, proxies={"num": 6}, kmeans={"num_clusters": 4})
    cls = METHODS.get(name)
    assert issubclass(cls, Method) and cls.name == name
    method = build_method(config, 8)
    assert type(method) is cls
    z, t = _batch(25)  # 5 seed groups of sampler.k = 5
    method.prepare(t)
    method.on_epoch_start(t, epoch=0)
    out = method(BatchView(z, z, t, torch.arange(len(z))))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    again = build_method(config, 8)
    again.load_state_dict(method.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), method.state_dict().values(),
                                                 strict=True))
    changes, notices = cls.fit_to_data(config, num_train=10)  # 10 images: two groups of sampler.k = 5
    assert len(changes) == len(notices)
    if name == "plm":
        assert changes == {"proxies": {"num": 2}}
    elif name == "kmeans":
        assert changes == {"kmeans": {"num_clusters": 2}}
    else:
        assert changes == {}
