"""One exact k-NN (plm.neighbors.exact) below every user: the manifold's candidates, the search index, drop_self."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plm.manifold import knn_candidates, nearest_candidates
from plm.neighbors.exact import drop_self, knn, knn_tensors


def _dense_reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """The former dense path of nearest_candidates: float64 matrix, diagonal excluded, stable sort."""
    x64 = x.double()
    sq = (x64 * x64).sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * x64 @ x64.T).clamp_(min=0)
    d.fill_diagonal_(float("inf"))
    return torch.sort(d, dim=1, stable=True).indices[:, :k]


@pytest.mark.parametrize("kind", ["gaussian", "integer ties", "duplicates"])
def test_nearest_candidates_match_the_former_dense_sort(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    if kind == "gaussian":
        x = torch.randn(300, 6, generator=g)
    elif kind == "integer ties":
        x = torch.randint(-3, 4, (300, 3), generator=g).float()  # many exactly equal distances
    else:
        x = torch.randn(100, 5, generator=g).repeat(3, 1)
    assert torch.equal(nearest_candidates(x, 12), _dense_reference(x, 12))


def test_knn_tensors_is_knn_on_tensors() -> None:
    x = torch.randint(-4, 5, (700, 4)).float()
    d_np, i_np = knn(x.numpy(), k=9)
    d_t, i_t = knn_tensors(x, k=9)
    assert np.array_equal(i_t.numpy(), i_np) and np.array_equal(d_t.numpy(), d_np)
    d64, i64 = knn_tensors(x.double(), k=9)
    assert d64.dtype == torch.float64 and np.array_equal(i64.numpy(), i_np)  # exact ties: same order in float64
    d_c, i_c = knn_candidates(x, 9, use_faiss=False)
    assert np.array_equal(i_c.numpy(), i_np) and np.array_equal(d_c.numpy(), d_np)


@pytest.mark.parametrize("use_faiss", [False, True])
def test_exclude_leaves_out_each_querys_own_row(use_faiss: bool) -> None:
    x = torch.randint(-3, 4, (500, 3)).float().numpy()
    sel = np.array([0, 7, 7, 499, 250])
    d_self, i_self = knn(x, k=6, use_faiss=use_faiss)
    d, i = knn(x[sel], x, k=6, use_faiss=use_faiss, exclude=sel)
    assert np.array_equal(i, i_self[sel]) and np.array_equal(d, d_self[sel])
    with pytest.raises(ValueError, match="exclude must hold one gallery index"):
        knn(x[sel], x, k=6, exclude=np.array([0, 1]))
    with pytest.raises(ValueError, match="exclude must hold one gallery index"):
        knn(x[sel], x, k=6, exclude=np.array([0, 1, 2, 3, 500]))
    with pytest.raises(ValueError, match=r"k must be in \[1, 499\]"):
        knn(x[sel], x, k=500, exclude=sel)


def test_drop_self() -> None:
    ids = np.array([[3, 0, 5], [1, 2, 4], [-1, 2, -1]])
    dist = np.array([[0.0, 1.0, 2.0], [0.5, 0.6, 0.7], [np.inf, 0.1, np.inf]], np.float32)
    out, d = drop_self(ids, np.array([0, 9, 2]), 2, dist)
    assert out.tolist() == [[3, 5], [1, 2], [-1, -1]]
    assert d is not None and d.tolist() == [[0.0, 2.0], [0.5, pytest.approx(0.6)], [np.inf, np.inf]]
    assert drop_self(ids, np.array([0, 9, 2]), 2)[1] is None


def test_approximate_candidates_are_valid_neighbour_lists() -> None:
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 8, generator=g)
    d, i = knn_candidates(x, 5, approximate=True, nprobe=1)  # drop_self on faiss's k + 1 results
    assert i.shape == (2000, 5) and bool((i >= 0).all()) and bool((i != torch.arange(2000)[:, None]).all())
    true = ((x[:, None, :] - x[i]) ** 2).sum(-1)
    assert torch.allclose(d, true, rtol=1e-4, atol=1e-4) and bool((d[:, 1:] >= d[:, :-1]).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_the_gpu_path_orders_like_the_cpu_path() -> None:
    x = torch.randint(-3, 4, (3000, 4)).float()
    d_cpu, i_cpu = knn_tensors(x, k=10)
    d_gpu, i_gpu = knn_tensors(x.cuda(), k=10)
    assert d_gpu.is_cuda and torch.equal(i_gpu.cpu(), i_cpu) and torch.equal(d_gpu.cpu(), d_cpu)
    assert torch.equal(nearest_candidates(x.cuda(), 10).cpu(), nearest_candidates(x, 10))
    assert torch.equal(knn_candidates(x.cuda(), 10)[1].cpu(), knn_candidates(x, 10, use_faiss=False)[1])
