"""Learnable proxy pieces (docs/method.md §5): a location ρ_k and a basis W_k per proxy.

The bases are free (K, d, m) parameters, orthonormalised by QR whenever they are used, so the
optimiser never has to keep them orthonormal. Initialisation: locations from k-means centres of
the pretrained training embeddings (or random samples of them), bases from a PCA of each
centre's nearest embeddings.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn


class ProxyBank(nn.Module):
    """K proxy pieces of dimension m in R^d.

    Args:
        num: K, the number of proxies (≥ 1).
        dim: d, the embedding dimension.
        piece_dim: m, each piece's dimension (≤ d).
        seed: seed of the random initial values (before :meth:`init_from_embeddings`).

    Raises:
        ValueError: non-positive sizes or m > d.
    """

    initialised: Tensor

    def __init__(self, num: int, dim: int, piece_dim: int = 2, seed: int = 0) -> None:
        super().__init__()
        if num < 1 or dim < 1 or piece_dim < 1:
            raise ValueError(f"num, dim and piece_dim must be positive, got {num}, {dim}, {piece_dim}")
        if piece_dim > dim:
            raise ValueError(f"piece_dim ({piece_dim}) cannot exceed the embedding dimension ({dim})")
        g = torch.Generator().manual_seed(seed)
        self.locations = nn.Parameter(nn.functional.normalize(torch.randn(num, dim, generator=g), dim=1))
        self.bases = nn.Parameter(torch.linalg.qr(torch.randn(num, dim, piece_dim, generator=g)).Q)
        #: set by :meth:`init_from_embeddings` (and restored with the state dict): random proxies
        #: are not a valid starting point, so :class:`plm.losses.PLMLoss` refuses them
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # state dicts written before the flag existed came from prepared (initialised) proxies
        if prefix + "locations" in state_dict and prefix + "initialised" not in state_dict:
            state_dict[prefix + "initialised"] = torch.ones((), dtype=torch.bool)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def num(self) -> int:
        """K."""
        return int(self.locations.shape[0])

    @property
    def piece_dim(self) -> int:
        """m."""
        return int(self.bases.shape[2])

    def orthonormal_bases(self) -> Tensor:
        """(K, d, m) orthonormal W_k: Gram-Schmidt on each basis's columns (differentiable).

        This is Q of the QR decomposition with a positive diagonal in R; ``torch.linalg.qr`` can
        flip a column's sign, which changes no similarity or loss (they see W_k W_kᵀ and
        ‖W_kᵀv‖ only), and costs several times more, forward and backward.
        """
        return orthonormal_columns(self.bases)

    def coordinates(self, points: Tensor, locations: Tensor) -> tuple[Tensor, Tensor]:
        """Every point against every proxy piece: ‖x_i − ρ_k‖² (P, K) and W_kᵀ(x_i − ρ_k) (P, K, m).

        W_k are the bases of :meth:`orthonormal_bases` without forming them: with A_k = W_k R_k
        (Gram-Schmidt), R_kᵀ is the Cholesky factor L_k of A_kᵀA_k, so W_kᵀv = L_k⁻¹ A_kᵀv. The
        cost is two (P, d) products and K triangular m × m solves; gradients reach ρ and the bases
        (not the points, which the losses detach). A basis whose columns are dependent to rounding
        (no Cholesky factor) falls back to forming W by :meth:`orthonormal_bases`.

        Args:
            points: (P, d) points.
            locations: (K, d) ρ_k as the losses see them (:meth:`plm.losses.PLMLoss.proxy_locations`).
        """
        a = self.bases
        k, d, m = a.shape
        if points.ndim != 2 or points.shape[1] != d or locations.shape != (k, d):
            raise ValueError(f"expected (P, {d}) points and ({k}, {d}) locations, got {tuple(points.shape)} "
                             f"and {tuple(locations.shape)}")
        dist2 = ((points * points).sum(1, keepdim=True) + (locations * locations).sum(1)[None]
                 - 2.0 * points @ locations.T)
        gram, at_points, at_locations = _BasisProducts.apply(points, locations, a)
        chol, info = torch.linalg.cholesky_ex(gram)
        if bool(info.any()):
            w = self.orthonormal_bases()
            at_points = (points @ w.permute(1, 0, 2).reshape(d, k * m)).view(-1, k, m)
            return dist2, at_points - (locations.unsqueeze(1) @ w).squeeze(1)[None]
        rel = (at_points - at_locations[None]).permute(1, 2, 0)  # (K, m, P): A_kᵀ(x_i − ρ_k)
        coords = torch.linalg.solve_triangular(chol, rel, upper=False)
        return dist2, coords.permute(2, 0, 1)

    @torch.no_grad()
    def init_from_embeddings(self, embeddings: Tensor | np.ndarray, method: str = "kmeans", local_points: int = 20,
                             seed: int = 0, max_points: Optional[int] = 20000, on_sphere: bool = False) -> None:
        """Place the proxies on the data.

        Args:
            embeddings: (N, d) pretrained training embeddings, N ≥ K.
            method: ``kmeans`` (k-means centres) or ``random`` (distinct random samples).
            local_points: nearest embeddings of each location used for its PCA basis.
            seed: seed of k-means and of the sampling.
            max_points: k-means runs on a seeded subsample of at most this many points.
            on_sphere: put the locations on the unit sphere (k-means centres of unit vectors lie
                inside the ball) and fit each basis in the tangent space there.

        Raises:
            ValueError: fewer embeddings than proxies, wrong width, or unknown method.
        """
        from plm.neighbors.exact import knn

        x = np.asarray(torch.as_tensor(embeddings).detach().cpu().float().numpy(), dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.locations.shape[1]:
            raise ValueError(f"embeddings must be (N, {self.locations.shape[1]}), got {x.shape}")
        if len(x) < self.num:
            raise ValueError(f"need at least as many embeddings as proxies ({self.num}), got {len(x)}; "
                             f"lower proxies.num")
        rng = np.random.default_rng(seed)
        if method == "kmeans":
            from sklearn.cluster import KMeans

            small = max_points is None or len(x) <= max_points
            sample = x if small else x[rng.choice(len(x), max_points, replace=False)]
            centres = KMeans(n_clusters=self.num, n_init=1, random_state=seed).fit(sample).cluster_centers_
        elif method == "random":
            centres = x[rng.choice(len(x), self.num, replace=False)]
        else:
            raise ValueError(f"method must be 'kmeans' or 'random', got {method!r}")
        centres = centres.astype(np.float32)
        if on_sphere:
            centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
        k = min(max(local_points, self.piece_dim + 1), len(x))
        _, idx = knn(centres, x, k=k, exclude_self=False)
        local = torch.from_numpy(x[idx])  # (K, k, d)
        centred = local - local.mean(1, keepdim=True)
        if on_sphere:  # tangent directions: remove the radial component at each location
            c = torch.from_numpy(centres)[:, None, :]
            centred = centred - (centred * c).sum(2, keepdim=True) * c
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (K, min(k, d), d)
        basis = vh[:, : self.piece_dim].transpose(1, 2)  # (K, d, m')
        if basis.shape[2] < self.piece_dim:  # fewer local points than m: pad with random directions
            extra = torch.randn(self.num, x.shape[1], self.piece_dim - basis.shape[2],
                                generator=torch.Generator().manual_seed(seed))
            basis = torch.cat([basis, extra], dim=2)
        self.locations.copy_(torch.from_numpy(centres).to(self.locations))
        self.bases.copy_(torch.linalg.qr(basis).Q.to(self.bases))
        self.initialised.fill_(True)


class _BasisProducts(torch.autograd.Function):
    """A_kᵀA_k (K, m, m), A_kᵀx_i (P, K, m) and A_kᵀρ_k (K, m) of raw bases A (K, d, m), points x (P, d)
    and locations ρ (K, d), with a backward that writes the bases' gradient in one (K, d, m) buffer.

    Autograd's own backward of these products runs batched products of shape d × m × m per proxy
    (slow kernels for such thin matrices) and adds three (K, d, m) gradients; here the gradient
    from the points is one (d, P) × (P, K·m) product and the other two are m fused multiply-adds
    each into the same buffer (m is the piece dimension, 1 to 3 in practice).
    """

    @staticmethod
    def forward(ctx: Any, points: Tensor, locations: Tensor, bases: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k, d, m = bases.shape
        flat = bases.permute(1, 0, 2).reshape(d, k * m)
        gram = bases.transpose(1, 2) @ bases
        at_points = (points @ flat).view(-1, k, m)
        at_locations = (locations.unsqueeze(1) @ bases).squeeze(1)
        ctx.save_for_backward(points, locations, bases, flat)
        return gram, at_points, at_locations

    @staticmethod
    def backward(ctx: Any, g_gram: Optional[Tensor], g_points: Optional[Tensor],
                 g_locations: Optional[Tensor]) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        points, locations, bases, flat = ctx.saved_tensors
        k, d, m = bases.shape
        need_points, need_locations, need_bases = ctx.needs_input_grad
        grad_points = grad_locations = grad_bases = None
        if need_bases:
            grad_bases = torch.zeros_like(bases)
            if g_points is not None:  # Σ_i x_i ⊗ g_ik: one product, then into the (K, d, m) layout
                grad_bases.copy_((points.T @ g_points.reshape(-1, k * m)).view(d, k, m).permute(1, 0, 2))
            if g_locations is not None:
                grad_bases.addcmul_(locations[:, :, None], g_locations[:, None, :])
            if g_gram is not None:  # d(AᵀA) = dAᵀA + AᵀdA: A (G + Gᵀ)
                sym = g_gram + g_gram.transpose(1, 2)
                for i in range(m):
                    grad_bases.addcmul_(bases[:, :, i:i + 1], sym[:, None, i, :])
        if need_locations and g_locations is not None:
            grad_locations = bases[:, :, 0] * g_locations[:, None, 0]
            for i in range(1, m):
                grad_locations = grad_locations.addcmul(bases[:, :, i], g_locations[:, None, i])
        if need_points and g_points is not None:
            grad_points = g_points.reshape(-1, k * m) @ flat.T
        return grad_points, grad_locations, grad_bases


def orthonormal_columns(a: Tensor) -> Tensor:
    """(…, d, m) modified Gram-Schmidt on the last two axes: orthonormal columns spanning those of ``a``.

    The columns must be independent (a dependent column is left as the normalised rounding noise
    of its remainder, as with ``torch.linalg.qr``)."""
    tiny = torch.finfo(a.dtype).tiny
    cols: list[Tensor] = []
    for j in range(a.shape[-1]):
        col = a[..., j]
        for q in cols:
            col = col - (q * col).sum(-1, keepdim=True) * q
        cols.append(col / col.norm(dim=-1, keepdim=True).clamp(min=tiny ** 0.5))
    return torch.stack(cols, dim=-1)
