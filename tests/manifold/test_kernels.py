"""The compiled kernels of a batch's PL model (:mod:`plm.manifold.kernels`) against the tensor code.

``tests/manifold/test_pools.py`` checks both paths against the explicit-loop reference on the
training pools and the awkward batch; here random batches and every option of the model compare
the two paths directly, and the small eigensolver is checked on its own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plm.manifold import ManifoldConfig, fit_pieces, kernels, similarity_matrix
from plm.utils.choices import CRITERIA, ON_BREACH


def _fit_both(monkeypatch: pytest.MonkeyPatch, x: torch.Tensor, cfg: ManifoldConfig) -> list:
    out = []
    for flag in ("1", "0"):
        monkeypatch.setenv("PLM_KERNELS", flag)
        out.append((fit_pieces(x, cfg), similarity_matrix(x, cfg)))
    return out


def _projectors(bases: torch.Tensor) -> torch.Tensor:
    return bases @ bases.transpose(1, 2)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(n=st.integers(1, 40), d=st.integers(1, 12), seed=st.integers(0, 2 ** 16), criterion=st.sampled_from(CRITERIA),
       on_breach=st.sampled_from(ON_BREACH), piece_dim=st.integers(1, 3), eps=st.sampled_from([0.0, 0.1, 0.4, 1.5]),
       pool=st.sampled_from(["group", "nearest", "all"]), subset_selection=st.booleans(), copies=st.integers(0, 3))
def test_kernels_give_the_tensor_codes_pieces_and_similarities(n: int, d: int, seed: int, criterion: str,
                                                                on_breach: str, piece_dim: int, eps: float,
                                                                pool: str, subset_selection: bool, copies: int) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(1.0, 0.1, d, dtype=torch.float64)
        for i in range(min(copies, n - 1)):  # equal points
            x[n - 1 - i] = x[i]
        group = {"group_size": 4} if pool == "group" and n % 4 == 0 else {}
        cfg = ManifoldConfig(piece_dim=piece_dim, eps=eps, criterion=criterion, on_breach=on_breach,
                             subset_selection=subset_selection, max_candidates=None if pool == "all" else 6, **group)
        (fast, s_fast), (slow, s_slow) = _fit_both(monkeypatch, x, cfg)
        assert fast.groups() == slow.groups()
        assert fast.ranks.tolist() == slow.ranks.tolist()
        torch.testing.assert_close(fast.means, slow.means, atol=1e-12, rtol=0)
        torch.testing.assert_close(_projectors(fast.bases), _projectors(slow.bases), atol=1e-9, rtol=0)
        # points on a piece: o = √(o²) turns float64's rounding of o² into ~1e-8 (test_pools' tolerance)
        torch.testing.assert_close(s_fast, s_slow, atol=5e-8, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernels_serve_cpu_tensors_unless_switched_off(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    x = torch.randn(30, 8, dtype=dtype)
    assert kernels.available() and kernels.enabled(x)
    monkeypatch.setenv("PLM_KERNELS", "0")
    assert not kernels.enabled(x)
    monkeypatch.setenv("PLM_KERNELS", "1")
    called = []
    original = kernels.fit_members
    monkeypatch.setattr(kernels, "fit_members", lambda *a: called.append(1) or original(*a))
    fit_pieces(x, ManifoldConfig(group_size=5))
    assert called == [1]


def test_warm_up_compiles_what_training_calls() -> None:
    """scripts/install.sh compiles the kernels ahead: the signatures a training batch uses are then
    compiled (float32 points, whose Gram matrix and coordinates are float64; int64 indices)."""
    kernels.warm_up()
    before = {name: len(getattr(kernels, name).signatures) for name in ("_fit", "_pieces_in_coordinates", "_directed")}
    x = torch.randn(30, 16)
    similarity_matrix(x, ManifoldConfig(group_size=5))
    similarity_matrix(x, ManifoldConfig(max_candidates=8, criterion="residual_variance", on_breach="stop"))
    after = {name: len(getattr(kernels, name).signatures) for name in before}
    assert after == before and all(n >= 1 for n in after.values())


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(1, kernels.MAX_SET), rank=st.integers(0, kernels.MAX_SET), seed=st.integers(0, 2 ** 16),
       repeat=st.booleans())
def test_eigh_matches_lapack(n: int, rank: int, seed: int, repeat: bool) -> None:
    """The Jacobi rotations: eigenvalues as LAPACK's, an orthonormal eigenbasis, A V = V Λ, on PSD
    matrices of the kernels' sizes, of any rank and with repeated eigenvalues."""
    kernels._compile()
    rng = np.random.default_rng(seed)
    if repeat:  # a projector: eigenvalues 0 and 1, each repeated
        q = np.linalg.qr(rng.normal(size=(n, n)))[0][:, :min(rank, n)]
        a = q @ q.T
    else:
        f = rng.normal(size=(n, min(rank, n))) * rng.uniform(0.01, 10.0, size=min(rank, n))
        a = f @ f.T
    lam, vec = kernels._eigh(a)
    scale = max(1.0, float(np.abs(a).max()))
    np.testing.assert_allclose(lam, np.linalg.eigvalsh(a), atol=1e-12 * scale * n, rtol=0)
    assert np.all(np.diff(lam) >= 0)
    np.testing.assert_allclose(vec.T @ vec, np.eye(n), atol=1e-12 * n)
    np.testing.assert_allclose(a @ vec, vec * lam, atol=1e-12 * scale * n)



def test_a_numba_that_does_not_import_leaves_the_tensor_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """numba missing or broken (an ImportError): the kernels are off and the PL model still fits."""
    import sys

    kernels.available.cache_clear()
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    try:
        x = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
        assert not kernels.enabled(x)
        called: list[int] = []
        monkeypatch.setattr(kernels, "fit_members", lambda *a: called.append(1))
        cfg = ManifoldConfig(group_size=5)
        pieces = fit_pieces(x, cfg)
        assert called == [] and len(pieces) == 30 and similarity_matrix(x, cfg).shape == (30, 30)
    finally:
        kernels.available.cache_clear()
