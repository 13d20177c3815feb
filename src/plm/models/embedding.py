"""Embedding model: backbone → pooling → linear embedding → optional L2 normalisation."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from plm.models.backbones import Backbone, Pretrained, create_backbone
from plm.models.preprocess import PreprocessConfig

log = logging.getLogger(__name__)

POOLINGS = ("avg", "avg+max")


@dataclass
class ModelConfig:
    """Everything needed to rebuild an :class:`EmbeddingModel` (saved inside checkpoints).

    Attributes:
        backbone: registered backbone name.
        embed_dim: output dimension of the linear layer; ``None`` keeps the pooled features.
        pooling: ``"avg"`` or ``"avg+max"`` (GAP + GMP, summed).
        normalize: L2-normalise the output.
        image_size: input resolution; ``None`` uses the backbone's own.
    """

    backbone: str = "efficientnet_lite0"
    embed_dim: Optional[int] = 128
    pooling: str = "avg+max"
    normalize: bool = True
    image_size: Optional[int] = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.embed_dim is not None and self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive or None, got {self.embed_dim}")
        from plm.models.backbones import canonical_backbone, check_image_size

        canonical_backbone(self.backbone)
        check_image_size(self.backbone, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for YAML configs and checkpoints."""
        return asdict(self)


def complete_basis(basis: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Orthonormal (d, d − r) columns completing the orthonormal (d, r) ``basis``, chosen stably.

    Directions without data variance (zero eigenvalues, e.g. features that are zero on every
    training image) are whatever an eigen-solver returns, and those change with the thread count
    and with rounding of the inputs. Here they are the coordinate axes e_1, e_2, … in order, each
    with its part in the span so far removed, kept when at least half of it remains (then a tenth,
    then any part): a choice that rounding cannot flip. Axes the basis does not touch are taken as
    they are (they are what the loop would keep), and the columns are ordered by the pass, then the
    axis, that gave them. Axes are projected ``block`` at a time (one matrix product per block),
    then accepted in order.
    """
    d, r = basis.shape
    if r >= d:
        return basis.new_zeros(d, 0)
    q = torch.zeros(d, d, dtype=basis.dtype)
    q[:, :r] = basis
    free = basis.abs().amax(1) <= 1e-12 if r else torch.ones(d, dtype=torch.bool)
    axes = free.nonzero().flatten()
    q[axes, r + torch.arange(len(axes))] = 1.0
    m = r + len(axes)
    origin = [(0, int(k)) for k in axes]
    taken = free.clone()
    for step, threshold in enumerate((0.5, 0.1, 1e-6)):
        todo = (~taken).nonzero().flatten()
        for start in range(0, len(todo), block):
            if m == d:
                break
            ks = todo[start:start + block]
            # e_k less its part in the span so far, for a block of axes at once (twice: Gram-Schmidt
            # twice is enough); the columns this block adds are removed one by one below
            v = -(q[:, :m] @ q[ks, :m].T)
            v[ks, torch.arange(len(ks))] += 1.0
            v -= q[:, :m] @ (q[:, :m].T @ v)
            first = m
            for j, k in enumerate(ks.tolist()):
                if m == d:
                    break
                u = v[:, j]
                if m > first:  # the columns this block added before this axis
                    u = u - q[:, first:m] @ (q[:, first:m].T @ u)
                    u = u - q[:, first:m] @ (q[:, first:m].T @ u)
                norm2 = float(u @ u)
                if norm2 >= threshold:
                    q[:, m] = u / norm2 ** 0.5
                    origin.append((step, k))
                    taken[k] = True
                    m += 1
    if m != d:
        raise RuntimeError(f"could not complete a basis of {r} directions in {d} dimensions")
    order = sorted(range(d - r), key=origin.__getitem__)
    return q[:, r:][:, order]


class EmbeddingHead(nn.Module):
    """Linear layer (orthogonal init, zero bias) plus optional L2 normalisation.

    Used alone in frozen mode, where pooled backbone features are cached.
    """

    def __init__(self, in_dim: int, embed_dim: Optional[int], normalize: bool = True):
        super().__init__()
        self.linear: nn.Module
        if embed_dim is None:
            self.linear = nn.Identity()
            self.out_dim = in_dim
        else:
            self.linear = nn.Linear(in_dim, embed_dim)
            nn.init.orthogonal_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
            self.out_dim = embed_dim
        self.normalize = normalize

    @torch.no_grad()
    def init_pca(self, features: torch.Tensor, chunk: int = 16384, center: bool = True) -> None:
        """Start as the centred projection onto the top principal directions of ``features``.

        ``linear(f) = Vᵀ(f − μ)`` with μ the mean of the (N, in_dim) ``features`` and V their top
        ``embed_dim`` covariance eigenvectors (signs fixed: each one's largest entry positive), so
        the initial embedding is the normalised PCA of the pooled features. The covariance is
        accumulated in float64 over ``chunk`` rows at a time (memory ≈ in_dim² + chunk × in_dim).
        With fewer than ``embed_dim + 1`` rows (or features without variance) the trailing
        directions span no data (a warning says so, below the full width): they complete the
        data's directions to an orthonormal basis by the coordinate axes (:func:`complete_basis`),
        so that they do not depend on the eigen-solver or the thread count.

        With ``center=False`` the directions are those of the uncentred second moment and the bias
        is zero: ``linear(f) = Vᵀf``. With ``embed_dim`` equal to the feature width that is a
        rotation, so the initial embedding ranks exactly as the L2-normalised pretrained features.

        Raises:
            ValueError: no linear layer, wrong feature width, fewer than 2 rows, or
                ``embed_dim`` > ``in_dim``.
        """
        if not isinstance(self.linear, nn.Linear):
            raise ValueError("init_pca needs a linear embedding layer (embed_dim is None)")
        out_dim, in_dim = self.linear.weight.shape
        if features.ndim != 2 or features.shape[1] != in_dim or features.shape[0] < 2:
            raise ValueError(f"init_pca needs (N >= 2, {in_dim}) features, got {tuple(features.shape)}")
        if out_dim > in_dim:
            raise ValueError(f"PCA gives at most {in_dim} directions, embed_dim is {out_dim}")
        n = features.shape[0]
        if n - 1 < out_dim < in_dim:  # at full width the directions form a rotation whatever the data
            log.warning("PCA head from %d images: only %d of the %d directions are fitted to data", n, n - 1, out_dim)
        feats = features.detach().cpu()
        mean = torch.zeros(in_dim, dtype=torch.float64)
        if center:
            for i in range(0, n, chunk):
                mean += feats[i:i + chunk].double().sum(0)
            mean /= n
        eps = torch.finfo(torch.float64).eps * max(n, in_dim)
        if n <= in_dim:
            # fewer rows than dimensions: the data's directions from an SVD of the rows (the eigen-
            # solver can fail to converge on the many zero eigenvalues)
            _, sv, vt = torch.linalg.svd(feats.double() - mean, full_matrices=False)
            fitted = vt[sv > sv[0] * eps].T
        else:
            cov = torch.zeros(in_dim, in_dim, dtype=torch.float64)
            for i in range(0, n, chunk):
                c = feats[i:i + chunk].double() - mean
                cov += c.T @ c
            val, vec = torch.linalg.eigh(cov / (n - 1))  # ascending
            val, vec = val.flip(0), vec.flip(1)
            fitted = vec[:, val > val[0].clamp(min=0) * eps]
        top = fitted[:, :out_dim]
        if top.shape[1] < out_dim:  # fewer data directions than the head's width
            top = torch.cat([fitted, complete_basis(fitted)], dim=1)[:, :out_dim]
        pivot = top.abs().argmax(0)
        top = top * torch.sign(top[pivot, torch.arange(out_dim)])[None, :]
        weight = top.T
        self.linear.weight.copy_(weight.to(self.linear.weight))
        self.linear.bias.copy_((-(weight @ mean)).to(self.linear.bias))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.linear(features)
        return F.normalize(z, dim=-1) if self.normalize else z


class EmbeddingModel(nn.Module):
    """Backbone + pooling + :class:`EmbeddingHead`.

    ``features(x)`` gives the pooled backbone features, ``head(features)`` the embedding;
    ``forward(x) == head(features(x))``.
    """

    def __init__(self, backbone: Backbone, config: ModelConfig):
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.head = EmbeddingHead(backbone.feature_dim, config.embed_dim, config.normalize)

    @property
    def preprocess(self) -> PreprocessConfig:
        """The backbone's preprocessing at this model's resolution."""
        cfg = self.backbone.preprocess
        return cfg.with_input_size(self.config.image_size) if self.config.image_size else cfg

    @property
    def out_dim(self) -> int:
        """Embedding dimension."""
        return self.head.out_dim

    @property
    def feature_dim(self) -> int:
        """Width of :meth:`features`."""
        return self.backbone.feature_dim

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """The model's pooling of a (B, C, H, W) feature map: (B, C)."""
        pooled = F.adaptive_avg_pool2d(fmap, 1).flatten(1)
        if self.config.pooling == "avg+max":
            pooled = pooled + F.adaptive_max_pool2d(fmap, 1).flatten(1)
        return pooled

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, shape (B, feature_dim)."""
        return self.pool(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def create_model(config: ModelConfig, pretrained: Pretrained = True) -> EmbeddingModel:
    """Build an :class:`EmbeddingModel` from a config."""
    return EmbeddingModel(create_backbone(config.backbone, pretrained=pretrained), config)


def save_model(model: EmbeddingModel, path: str | os.PathLike, extra: Optional[dict] = None) -> None:
    """Write ``{"model_config", "model_state", **extra}`` atomically (temp file + rename)."""
    from plm.utils.io import atomic_torch_save

    payload = {"model_config": model.config.to_dict(), "model_state": model.state_dict()}
    payload.update(extra or {})
    atomic_torch_save(payload, path)


def load_model(path: str | os.PathLike) -> EmbeddingModel:
    """Rebuild an :class:`EmbeddingModel` from a plm checkpoint, never unpickling objects.

    Raises:
        ValueError: the file is corrupt, truncated, or not a plm checkpoint.
    """
    from plm.utils.io import safe_torch_load

    ckpt = safe_torch_load(path)
    if "model_config" not in ckpt or "model_state" not in ckpt:
        raise ValueError(f"{path} is not a plm checkpoint (no model_config / model_state)")
    try:
        config = ModelConfig(**ckpt["model_config"])
        model = create_model(config, pretrained=False)
    except (TypeError, ValueError, RuntimeError, KeyError) as err:
        raise ValueError(f"{path} holds a model plm cannot rebuild: {err}") from err
    state = ckpt["model_state"]
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if not isinstance(state, dict) or {k: tuple(getattr(v, "shape", ())) for k, v in state.items()} != own:
        raise ValueError(f"{path} does not fit the model it records (backbone {config.backbone}, embed_dim "
                         f"{config.embed_dim}): its weights have other names or shapes; the file is damaged or was "
                         f"not written by plm (a plain weights file goes to --weights / model.backbone_weights)")
    model.load_state_dict(state)
    return model.eval()
