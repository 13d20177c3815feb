"""plm.losses as a library: single-process modules == functional layer == explicit loops; PLMLoss."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.references import reference_context, reference_expansion
from plm.losses import (
    ContrastiveLoss,
    LossConfig,
    NeighborhoodLoss,
    PLMConfig,
    PLMLoss,
    PointLoss,
    ProxiesNotInitializedError,
    ProxyConfig,
    ProxyLoss,
    RelaxedContrastiveLoss,
)
from plm.losses import functional as LF
from plm.manifold import ManifoldConfig
from plm.manifold.reference import reference_directed, reference_similarity


def _fresh_modules(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_plm_losses_imports_without_plm_training() -> None:
    mods = _fresh_modules("import plm.losses")
    assert "plm.losses" in mods
    assert not any(m.startswith("plm.training") for m in mods)


def test_config_engine_is_layer_zero() -> None:
    mods = _fresh_modules("import plm.utils.config")
    assert "torch" not in mods
    assert {m for m in mods if m.startswith("plm.")} <= {"plm.utils", "plm.utils.config", "plm.errors", "plm._compat"}


def test_small_training_imports_stay_small() -> None:
    mods = _fresh_modules("from plm.training import TrainConfig, default_config; default_config('digits')")
    assert not {"plm.training.trainer", "plm.training.pipeline", "plm.training.splits"} & mods


# ---------------------------------------------------------------------------- explicit loops

def _rand(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _target(seed: int, rows: int, cols: int) -> torch.Tensor:
    return torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _d(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.linalg.norm(a.numpy() - b.numpy()))


def _point_loop(z, ref, s, delta, self_pairs: bool, balanced: bool = False) -> float:
    total, n = 0.0, 0
    for i in range(len(z)):
        cols = [j for j in range(len(ref)) if not (self_pairs and i == j)]
        pos = sum(float(s[i, j]) for j in cols)
        neg = sum(1 - float(s[i, j]) for j in cols)
        for j in cols:
            w = 0.5 * (float(s[i, j]) / pos + (1 - float(s[i, j])) / neg) * len(cols) if balanced else 1.0
            total += w * (delta * (1 - float(s[i, j])) - _d(z[i], ref[j])) ** 2
            n += 1
    return total / n


def _contrastive_loop(z, ref, s, margin, self_pairs: bool, normalize_rows: bool) -> float:
    total, n = 0.0, 0
    for i in range(len(z)):
        d = [0.0 if (self_pairs and i == j) else _d(z[i], ref[j]) for j in range(len(ref))]
        mean = sum(d) / len(d) if normalize_rows else 1.0
        for j in range(len(ref)):
            if self_pairs and i == j:
                continue
            dn, w = d[j] / mean, float(s[i, j])
            total += w * dn ** 2 + (1 - w) * max(margin - dn, 0.0) ** 2
            n += 1
    return total / n


@pytest.mark.parametrize("balanced", [False, True])
def test_point_loss_module_equals_functional_and_loop(balanced: bool) -> None:
    z, ref = _rand(0, 9, 3), _rand(1, 5, 3)
    s = _target(2, 9, 9)
    loss = PointLoss(delta=1.3, balanced=balanced)
    got = float(loss(z, s))
    w = LF.balanced_pair_weights(s) if balanced else None
    assert got == pytest.approx(float(LF.point_loss(z, s, 1.3, weights=w)), rel=1e-12)
    assert got == pytest.approx(_point_loop(z, z, s, 1.3, self_pairs=True, balanced=balanced), rel=1e-10)
    s_ref = _target(3, 9, 5)
    assert float(loss(z, s_ref, ref)) == pytest.approx(
        _point_loop(z, ref, s_ref, 1.3, self_pairs=False, balanced=balanced), rel=1e-10)


@pytest.mark.parametrize("normalize_rows", [True, False])
def test_relaxed_contrastive_module_equals_functional_and_loop(normalize_rows: bool) -> None:
    z, ref = _rand(4, 8, 3), _rand(5, 6, 3)
    s = _target(6, 8, 8)
    loss = RelaxedContrastiveLoss(margin=0.9, normalize_rows=normalize_rows)
    got = float(loss(z, s))
    assert got == pytest.approx(float(LF.relaxed_contrastive_loss(z, s, 0.9, normalize_rows=normalize_rows)),
                                rel=1e-12)
    assert got == pytest.approx(_contrastive_loop(z, z, s, 0.9, True, normalize_rows), rel=1e-10)
    s_ref = _target(7, 8, 6)
    assert float(loss(z, s_ref, ref)) == pytest.approx(_contrastive_loop(z, ref, s_ref, 0.9, False, normalize_rows),
                                                       rel=1e-10)


def test_contrastive_module_is_the_unnormalised_loss() -> None:
    z = _rand(8, 7, 3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0])
    s = (labels[:, None] == labels[None]).double()
    got = float(ContrastiveLoss(margin=1.2)(z, s))
    assert got == pytest.approx(float(LF.contrastive_loss(z, s, 1.2)), rel=1e-12)
    assert got == pytest.approx(_contrastive_loop(z, z, s, 1.2, True, normalize_rows=False), rel=1e-10)


@pytest.mark.parametrize("relaxed", [False, True])
def test_proxy_loss_module_equals_functional_and_loop(relaxed: bool) -> None:
    z, rho = _rand(9, 6, 3), _rand(10, 4, 3)
    s = _target(11, 6, 4)
    got = float(ProxyLoss(delta=1.1, relaxed_contrastive=relaxed)(z, rho, s))
    fn = LF.proxy_contrastive_loss if relaxed else LF.proxy_loss
    assert got == pytest.approx(float(fn(z, rho, s, 1.1)), rel=1e-12)
    if relaxed:
        want = _contrastive_loop(z, rho, s, 1.1, False, normalize_rows=True)
    else:
        want = _point_loop(z, rho, s, 1.1, self_pairs=False)
    assert got == pytest.approx(want, rel=1e-10)


def _neighbourhood_loop(x, rho, w, s, n, lam) -> float:
    total = 0.0
    for k in range(len(rho)):
        for i in np.argsort(-s[:, k].numpy(), kind="stable")[:n]:
            r = (x[i] - rho[k]).numpy()
            orth = r - w[k].numpy() @ (w[k].numpy().T @ r)
            total += float(orth @ orth) + lam * float(r @ r)
    return total / (len(rho) * n)


def test_neighbourhood_module_equals_functional_and_loop() -> None:
    x, rho = _rand(12, 10, 4), _rand(13, 3, 4)
    w = torch.linalg.qr(_rand(14, 3, 4, 2)).Q
    s = _target(15, 10, 3)
    got = float(NeighborhoodLoss(n=3, lam=0.7)(x, rho, w, s))
    assert got == pytest.approx(float(LF.neighborhood_loss(x, rho, w, s, 3, 0.7)), rel=1e-12)
    assert got == pytest.approx(_neighbourhood_loop(x, rho, w, s, 3, 0.7), rel=1e-10)


def test_modules_reject_bad_shapes_and_values() -> None:
    z = _rand(0, 5, 3)
    with pytest.raises(ValueError, match="target must be"):
        PointLoss()(z, _target(1, 5, 4))
    with pytest.raises(ValueError, match="delta must be positive"):
        PointLoss(delta=0)
    with pytest.raises(ValueError, match="margin must be positive"):
        RelaxedContrastiveLoss(margin=-1)


# ---------------------------------------------------------------------------------- PLMLoss

def _teacher_student(b: int = 12, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = F.normalize(torch.randn(b, d, generator=g), dim=1)
    z = F.normalize(t + 0.2 * torch.randn(b, d, generator=g), dim=1).requires_grad_()
    return z, t


def _plm_loop(loss: PLMLoss, z: torch.Tensor, t: torch.Tensor) -> float:
    """The PLM total by loops: PL target (reference implementation), point, proxy and neighbourhood terms."""
    cfg, m = loss.config.loss, loss.config.manifold
    z, t = z.detach().double(), t.double()
    s = reference_expansion(reference_similarity(t.numpy(), m), t.numpy(), cfg.expansion)
    s = torch.from_numpy(reference_context(s, cfg.context_k, cfg.context, cfg.context_mode))
    relaxed = cfg.kind == "relaxed_contrastive"
    total = cfg.point * (_contrastive_loop(z, z, s, cfg.margin, True, True) if relaxed
                         else _point_loop(z, z, s, cfg.delta, self_pairs=True))
    assert loss.proxies is not None
    rho = loss.proxy_locations().detach().double()
    w = loss.proxies.orthonormal_bases().detach().double()
    x = F.normalize(t, dim=1)
    sp = torch.tensor([[reference_directed(x[i].numpy(), rho[k].numpy(), rho[k].numpy(), w[k].numpy(), m.n_alpha,
                                           m.n_beta) for k in range(len(rho))] for i in range(len(x))])
    total += cfg.proxy * (_contrastive_loop(z, rho, sp, cfg.margin, False, True) if relaxed
                          else _point_loop(z, rho, sp, cfg.delta, self_pairs=False))
    total += cfg.neighbourhood * _neighbourhood_loop(x, rho, w, sp, cfg.neighbourhood_points,
                                                     cfg.neighbourhood_lambda)
    return total


@pytest.mark.parametrize("expansion,context,mode", [(0, 0.0, "mix"), (5, 0.0, "mix"), (0, 0.5, "mix"),
                                                    (5, 0.3, "mix"), (0, 0.25, "raise"), (0, 0.5, "raise"),
                                                    (5, 1.0, "raise")])
@pytest.mark.parametrize("kind", ["relaxed_contrastive", "regression"])
def test_plm_loss_equals_method_and_loop(kind: str, expansion: int, context: float, mode: str) -> None:
    from plm.training.methods import BatchView, PLMMethod

    z, t = _teacher_student()
    config = PLMConfig(loss=LossConfig(kind=kind, proxy=0.3, neighbourhood=0.2, expansion=expansion,
                                       context=context, context_k=4, context_mode=mode),
                       proxies=ProxyConfig(num=3))
    loss = PLMLoss(config, embed_dim=4, seed=1)
    loss.init_proxies(t)
    got = loss(z, t)
    assert set(loss.last_terms) == {"point", "proxy", "neighbourhood", "loss"}
    assert float(loss.last_terms["loss"]) == got.item()
    assert got.item() == pytest.approx(_plm_loop(loss, z, t), rel=1e-4)
    method = PLMMethod(4, config, seed=1)
    method.loss.load_state_dict(loss.state_dict())
    terms = method(BatchView(z, z, t, torch.arange(len(z))))
    assert terms["loss"].item() == pytest.approx(got.item(), rel=1e-6)


def test_plm_loss_terms_of_two_processes_add_up_to_one() -> None:
    """Each "process" scores its rows against the global batch (Rows.of_process); the sums are the whole loss."""
    z, t = _teacher_student()
    loss = PLMLoss(PLMConfig(proxies=ProxyConfig(num=3)), embed_dim=4, seed=1)
    loss.init_proxies(t)
    whole = loss.terms(z, t)
    half = len(z) // 2
    parts = [loss.terms(z[a:e], t, student_all=z, rows=LF.Rows.of_process(a, len(z), world_size=2))
             for a, e in ((0, half), (half, len(z)))]
    for name in ("point", "proxy", "neighbourhood", "loss"):
        assert float((parts[0][name] + parts[1][name]).detach()) == pytest.approx(float(whole[name].detach()), rel=1e-6)


def test_rows_refuse_impossible_values() -> None:
    for bad in ({"start": -1}, {"denom": 0.0}, {"world_size": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LF.Rows(**bad)
    assert LF.Rows.of_process(3, 5).slice(2) == slice(3, 5) and LF.Rows.of_process(3, 5).denom == 20.0
    assert bool(LF.Rows.reference().mask(2, 3, torch.device("cpu")).all())


def test_plm_loss_refuses_random_proxies() -> None:
    z, t = _teacher_student()
    loss = PLMLoss(embed_dim=4, num_proxies=3)
    with pytest.raises(ProxiesNotInitializedError, match=r"init_proxies\(train_embeddings\)"):
        loss(z, t)
    PLMLoss(embed_dim=4, num_proxies=0)(z, t).backward()  # no proxies: nothing to initialise


def test_plm_loss_in_a_training_loop_and_checkpoint() -> None:
    torch.manual_seed(0)
    _, t = _teacher_student(60, 4)
    model = torch.nn.Linear(4, 4)
    loss = PLMLoss(embed_dim=4, num_proxies=5)
    loss.init_proxies(t)
    before = loss.proxies.locations.detach().clone()
    opt = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=1e-2)
    for _ in range(3):
        value = loss(F.normalize(model(t), dim=1), t)
        opt.zero_grad()
        value.backward()
        opt.step()
    assert not torch.equal(before, loss.proxies.locations)  # the proxies are optimised with the model
    state = loss.state_dict()
    assert {"proxies.locations", "proxies.bases", "proxies.initialised"} <= set(state)
    again = PLMLoss(embed_dim=4, num_proxies=5)
    again.load_state_dict(state)
    assert torch.equal(again.proxies.locations, loss.proxies.locations)
    assert again(F.normalize(model(t), dim=1), t).item() == pytest.approx(loss(F.normalize(model(t), dim=1), t).item())


def test_library_defaults_are_the_config_defaults() -> None:
    from plm.training import TrainConfig, build_method
    from plm.training.methods import PLMMethod

    cfg = TrainConfig()
    plm = PLMConfig(manifold=cfg.manifold, loss=cfg.loss, proxies=cfg.proxies, similarity=cfg.similarity)
    assert PLMLoss(embed_dim=8).config == plm == PLMMethod(8).config
    assert PLMMethod(8).config.loss.kind == "relaxed_contrastive" and PLMMethod(8).config.proxies.on_sphere
    assert build_method(cfg, 8).config == plm
    assert PointLoss().delta == cfg.loss.delta and RelaxedContrastiveLoss().margin == cfg.loss.margin


def test_old_method_state_dict_loads() -> None:
    """A checkpoint written before plm.losses: the proxies at ``proxies.*``, no ``initialised`` flag."""
    from plm.training.methods import PLMMethod

    _, t = _teacher_student(40, 4)
    old = PLMMethod(4, num_proxies=3)
    old.prepare(t)
    state = {k.removeprefix("loss."): v for k, v in old.state_dict().items() if not k.endswith("initialised")}
    assert set(state) == {"proxies.locations", "proxies.bases"}
    new = PLMMethod(4, num_proxies=3, seed=5)
    new.load_state_dict(state)
    assert torch.equal(new.proxies.locations, old.proxies.locations) and bool(new.proxies.initialised)


def test_manifold_config_from_the_plm_config() -> None:
    loss = PLMLoss(PLMConfig(manifold=ManifoldConfig(piece_dim=3)), embed_dim=6, num_proxies=2)
    assert loss.proxies is not None and loss.proxies.piece_dim == 3


@pytest.mark.parametrize("bad,name", [({"context": 1.5}, "loss.context"), ({"context": -0.1}, "loss.context"),
                                      ({"context_k": 0}, "loss.context_k"),
                                      ({"context_mode": "max"}, "loss.context_mode")])
def test_context_options_are_checked(bad: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        LossConfig(**bad)
