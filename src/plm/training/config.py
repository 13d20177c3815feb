"""Training configuration: nested dataclasses, YAML files and ``key=value`` overrides.

A :class:`TrainConfig` is built in layers, each overriding the one before:

1. :func:`default_config` – library defaults plus a small preset per dataset (image size,
   validation split, SOP's momentum and k);
2. a YAML file (``plm train --config FILE``);
3. the named flags of ``plm train`` (``--dataset``, ``--epochs`` …);
4. dotted ``key=value`` overrides (``loss.delta=1.2``), values parsed as YAML scalars.

Unknown keys are rejected with the list of valid ones; every section validates its values in
``__post_init__`` (``ValueError``). The ``manifold`` section is exactly
:class:`plm.manifold.ManifoldConfig`, so its keys and defaults live in one place.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

MODES = ("frozen", "finetune")
METHODS = ("plm", "stml", "kmeans")
SIMILARITIES = ("continuous", "binary")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("off", "auto", "bf16", "fp16")
POOLINGS = ("avg", "avg+max")
SCHEDULES = ("cosine", "constant")
EVAL_MODELS = ("student", "teacher")
PROXY_INITS = ("kmeans", "random")
PLM_LOSSES = ("regression", "weighted_regression", "relaxed_contrastive")
PROXY_UPDATES = ("all", "neighbourhood")
HEAD_INITS = ("pca", "orthogonal")


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message says which and what is allowed."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _choice(name: str, value: Any, choices: Sequence[str]) -> None:
    _check(value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _positive(name: str, value: Any, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= 0 if allow_zero else value > 0)
    _check(ok, f"{name} must be a finite {'non-negative' if allow_zero else 'positive'} number"
               f"{' or null' if allow_none else ''}; got {value!r}")


@dataclass
class DataConfig:
    """Data options.

    Attributes:
        val_classes: seen classes held out as the class-disjoint validation split used for model
            selection; ``None`` = automatic (20% of the seen classes, at least 2, and none when
            there are fewer than 4 seen classes); ``0`` = no validation, select on training loss.
        limit: train on a seeded random subset of this many training images.
        augment: random resized crop + flip; ``None`` (default) = on in finetune mode, off in frozen
            mode, where it is impossible (asking for it there prints a notice).
        num_workers: DataLoader workers decoding images (finetune mode and embedding passes).
        cache: use the on-disk feature cache for the pretrained features of frozen mode.
    """

    val_classes: Optional[int] = None
    limit: Optional[int] = None
    augment: Optional[bool] = None
    num_workers: int = 0
    cache: bool = True

    def __post_init__(self) -> None:
        _positive("data.val_classes", self.val_classes, allow_none=True, allow_zero=True)
        _positive("data.limit", self.limit, allow_none=True)
        _positive("data.num_workers", self.num_workers, allow_zero=True)


@dataclass
class ModelSection:
    """The embedding network (see :class:`plm.models.ModelConfig`).

    Attributes:
        backbone: registered backbone name (``efficientnet_lite0``, ``googlenet``, ``resnet50``).
        backbone_weights: local ImageNet weights file for backbones that ship without weights.
        embed_dim: output dimension of the linear embedding layer.
        pooling: ``avg`` or ``avg+max`` (GAP + GMP).
        image_size: input resolution; ``None`` = the backbone's own.
        freeze_bn: keep BatchNorm layers in eval mode with frozen affine weights (finetune mode).
        head_init: ``pca`` (the linear layer starts as the centred projection onto the top
            ``embed_dim`` principal directions of the training images' pretrained features; no
            labels) or ``orthogonal`` (random orthogonal weights, zero bias).
    """

    backbone: str = "efficientnet_lite0"
    backbone_weights: Optional[str] = None
    embed_dim: int = 128
    pooling: str = "avg+max"
    image_size: Optional[int] = None
    freeze_bn: bool = True
    head_init: str = "pca"

    def __post_init__(self) -> None:
        from plm.models.backbones import canonical_backbone, check_image_size

        _positive("model.embed_dim", self.embed_dim)
        _choice("model.pooling", self.pooling, POOLINGS)
        _choice("model.head_init", self.head_init, HEAD_INITS)
        try:
            canonical_backbone(self.backbone, "model.backbone")
            check_image_size(self.backbone, self.image_size, "model.image_size")
        except ValueError as err:
            raise ConfigError(str(err)) from None


@dataclass
class SamplerConfig:
    """Neighbourhood batch sampling (docs/method.md §2).

    Attributes:
        batch_size: |B|, images per (global) batch; a multiple of ``k``.
        k: each seed comes with its k−1 nearest neighbours (teacher k-NN table, rebuilt each epoch).
        batches_per_epoch: steps per epoch; ``None`` = every training image is a seed once.
    """

    batch_size: int = 120
    k: int = 5
    batches_per_epoch: Optional[int] = None

    def __post_init__(self) -> None:
        _positive("sampler.batch_size", self.batch_size)
        _check(isinstance(self.k, int) and self.k >= 2,
               f"sampler.k must be an integer >= 2 (each seed comes with its k-1 nearest neighbours); got {self.k!r}")
        _positive("sampler.batches_per_epoch", self.batches_per_epoch, allow_none=True)
        _check(self.batch_size % self.k == 0,
               f"sampler.batch_size ({self.batch_size}) must be a multiple of sampler.k ({self.k})")


@dataclass
class EMAConfig:
    """Momentum teacher: φ ← m·φ + (1−m)·θ after every step."""

    momentum: float = 0.999

    def __post_init__(self) -> None:
        _check(isinstance(self.momentum, (int, float)) and 0.0 <= self.momentum <= 1.0,
               f"ema.momentum must be in [0, 1]; got {self.momentum!r}")


@dataclass
class ProxyConfig:
    """Learnable proxy pieces (docs/method.md §5).

    Attributes:
        num: N_ρ; ``0`` disables proxies (and L_proxy, L_neighbourhood).
        init: ``kmeans`` (centres of the pretrained training embeddings) or ``random`` (samples).
        local_points: nearest points per centre for the local PCA giving the initial basis.
        on_sphere: proxies live on the unit sphere with the embeddings.
        update: ``all`` (L_proxy and L_neighbourhood move the proxies) or ``neighbourhood``.
    """

    num: int = 100
    init: str = "kmeans"
    local_points: int = 20
    on_sphere: bool = True
    update: str = "all"

    def __post_init__(self) -> None:
        _positive("proxies.num", self.num, allow_zero=True)
        _choice("proxies.init", self.init, PROXY_INITS)
        _choice("proxies.update", self.update, PROXY_UPDATES)
        _positive("proxies.local_points", self.local_points)


@dataclass
class LossConfig:
    """PLM losses: weights, δ, the point loss's kind and the neighbourhood term's n, λ and radius.

    Attributes:
        kind: ``regression`` (distances regress onto δ(1 − s)), ``weighted_regression`` or
            ``relaxed_contrastive`` (PL similarity as STML-style soft weights, margin ``margin``).
        neighbourhood_radius: L_neighbourhood counts only points within this distance of a proxy.
    """

    delta: float = 1.5
    point: float = 1.0
    proxy: float = 0.1
    neighbourhood: float = 0.1
    neighbourhood_points: int = 4
    neighbourhood_lambda: float = 0.5
    kind: str = "relaxed_contrastive"
    margin: float = 1.0
    neighbourhood_radius: Optional[float] = None

    def __post_init__(self) -> None:
        _positive("loss.delta", self.delta)
        _choice("loss.kind", self.kind, PLM_LOSSES)
        _positive("loss.margin", self.margin)
        _positive("loss.neighbourhood_radius", self.neighbourhood_radius, allow_none=True)
        for name in ("point", "proxy", "neighbourhood", "neighbourhood_lambda"):
            _positive(f"loss.{name}", getattr(self, name), allow_zero=True)
        _positive("loss.neighbourhood_points", self.neighbourhood_points)


@dataclass
class STMLConfig:
    """STML peer (docs/method.md §8): W = (W_P + W_C)/2 (σ, k-reciprocal k), relaxed contrastive loss (δ)."""

    sigma: float = 3.0
    k: int = 5
    delta: float = 1.0

    def __post_init__(self) -> None:
        _positive("stml.sigma", self.sigma)
        _positive("stml.k", self.k)
        _positive("stml.delta", self.delta)


@dataclass
class KMeansConfig:
    """k-means pseudo-label peer: clusters of the teacher's training embeddings, every epoch."""

    num_clusters: int = 100
    margin: float = 1.0

    def __post_init__(self) -> None:
        _positive("kmeans.num_clusters", self.num_clusters)
        _positive("kmeans.margin", self.margin)


@dataclass
class OptimConfig:
    """AdamW with one learning rate per parameter group and a per-step schedule.

    Attributes:
        lr_backbone: backbone learning rate (finetune mode).
        lr_embedding: embedding layer learning rate.
        lr_proxies: proxy locations and bases learning rate.
        weight_decay: AdamW weight decay (not applied to proxies and biases).
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        schedule: ``cosine`` (to zero at the last step) or ``constant``.
        grad_clip: clip the global gradient norm; ``None`` = off.
    """

    lr_backbone: float = 1e-4
    lr_embedding: float = 1e-3
    lr_proxies: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 0.0
    schedule: str = "cosine"
    grad_clip: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("lr_backbone", "lr_embedding", "lr_proxies"):
            _positive(f"optim.{name}", getattr(self, name))
        for name in ("weight_decay", "warmup_epochs"):
            _positive(f"optim.{name}", getattr(self, name), allow_zero=True)
        _choice("optim.schedule", self.schedule, SCHEDULES)
        _positive("optim.grad_clip", self.grad_clip, allow_none=True)


@dataclass
class EvalConfig:
    """Validation (model selection) and the final test evaluation.

    Attributes:
        every: validate every N epochs (and always after the last).
        batch_size: images per forward pass when embedding.
        model: which network is evaluated and exported: ``student`` or the EMA ``teacher``.
        val_limit: validate on a seeded subset of this many validation images.
        test_limit: test on a seeded subset (for quick runs; full split by default).
        recall_at: K values; ``None`` = 1/2/4/8 (1/10/100/1000 on SOP).
        nmi: compute NMI on the test split.
        baseline: also report the pretrained backbone's test metrics (free in frozen mode).
    """

    every: int = 1
    batch_size: int = 128
    model: str = "student"
    val_limit: Optional[int] = None
    test_limit: Optional[int] = None
    recall_at: Optional[list[int]] = None
    nmi: bool = True
    baseline: bool = True

    def __post_init__(self) -> None:
        _positive("eval.every", self.every)
        _positive("eval.batch_size", self.batch_size)
        _choice("eval.model", self.model, EVAL_MODELS)
        _positive("eval.val_limit", self.val_limit, allow_none=True)
        _positive("eval.test_limit", self.test_limit, allow_none=True)
        if self.recall_at is not None:
            _check(len(self.recall_at) > 0 and all(isinstance(k, int) and k > 0 for k in self.recall_at),
                   f"eval.recall_at must be a list of positive integers; got {self.recall_at!r}")


@dataclass
class LogConfig:
    """Progress bar and TensorBoard (used when installed)."""

    progress: bool = True
    tensorboard: bool = True


def _manifold_default() -> dict:
    from plm.manifold import ManifoldConfig

    return ManifoldConfig().to_dict()


@dataclass
class TrainConfig:
    """Everything ``plm train`` needs; saved as ``config.yaml`` next to the outputs.

    Attributes:
        dataset: dataset name (``plm.data.DATASETS``).
        data_root: dataset root folder.
        method: ``plm`` (default), ``stml`` or ``kmeans``.
        mode: ``frozen`` (cached backbone features; trains the embedding head, its teacher and the
            proxies) or ``finetune`` (the whole network).
        similarity: ``continuous`` PL similarity or the ``binary`` same-piece ablation.
        epochs: training epochs.
        seed: seed of every random choice (runs are reproducible on CPU).
        device: ``auto``, ``cpu`` or ``cuda``.
        amp: mixed precision of the training forward passes: ``off``, ``auto``, ``bf16`` or ``fp16``
            (see :mod:`plm.utils.device`).
    """

    dataset: str = "fashion-mnist"
    data_root: Optional[str] = None
    method: str = "plm"
    mode: str = "frozen"
    similarity: str = "continuous"
    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    amp: str = "off"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    manifold: dict = field(default_factory=_manifold_default)
    proxies: ProxyConfig = field(default_factory=ProxyConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    stml: STMLConfig = field(default_factory=STMLConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        from plm.data import DATASETS
        from plm.manifold import ManifoldConfig

        _choice("dataset", self.dataset, list(DATASETS))
        _choice("method", self.method, METHODS)
        _choice("mode", self.mode, MODES)
        _choice("similarity", self.similarity, SIMILARITIES)
        _choice("device", self.device, DEVICES)
        _choice("amp", self.amp, AMP_MODES)
        _check(isinstance(self.epochs, int) and not isinstance(self.epochs, bool) and self.epochs >= 1,
               f"epochs must be a positive integer (>= 1); got {self.epochs!r}")
        _check(isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
               f"seed must be a non-negative integer; got {self.seed!r}")
        try:
            self.manifold = ManifoldConfig(**self.manifold).to_dict()
        except ValueError as err:
            raise ConfigError(f"manifold: {err}") from err
        if self.method != "plm":
            _check(self.similarity == "continuous", "similarity=binary is an ablation of method plm only")

    @property
    def augment(self) -> bool:
        """Whether training images are augmented: ``data.augment``, or by default in finetune mode only."""
        return self.mode == "finetune" and self.data.augment is not False

    def manifold_config(self):
        """The ``manifold`` section as a :class:`plm.manifold.ManifoldConfig`."""
        from plm.manifold import ManifoldConfig

        return ManifoldConfig(**self.manifold)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a nested dict, rejecting unknown keys and ill-typed values.

        Raises:
            ConfigError: unknown key (the message lists the valid ones) or invalid value.
        """
        return _build(cls, data, prefix="")

    def to_yaml(self) -> str:
        """The resolved configuration as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


# ---------------------------------------------------------------------------------- building

def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def valid_keys(cls: type = None) -> list[str]:
    """Every dotted key a :class:`TrainConfig` accepts (``loss.delta``, ``manifold.eps`` …)."""
    from plm.manifold import ManifoldConfig

    cls = cls or TrainConfig
    keys = []
    for f in dataclasses.fields(cls):
        if f.name == "manifold" and cls is TrainConfig:
            keys += [f"manifold.{g.name}" for g in dataclasses.fields(ManifoldConfig)]
        elif dataclasses.is_dataclass(_hints(cls)[f.name]):
            keys += [f"{f.name}.{k}" for k in valid_keys(_hints(cls)[f.name])]
        else:
            keys.append(f.name)
    return keys


def _unknown(key: str) -> ConfigError:
    import difflib

    keys = valid_keys()
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}; valid keys: {', '.join(keys)}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, args[0], key) for v in value]
    if tp is bool:
        _check(isinstance(value, bool), f"{key} must be true or false; got {value!r}")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        _check(isinstance(value, int) and not isinstance(value, bool), f"{key} must be an integer; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{key} must be a number; got {value!r}")
        return float(value)
    if tp is str:
        _check(value is not None and not isinstance(value, (dict, list)), f"{key} must be a string; got {value!r}")
        return str(value)
    if tp is dict:
        _check(isinstance(value, Mapping), f"{key} must be a mapping; got {value!r}")
        return dict(value)
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping; got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(prefix + str(key))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, prefix + key + ".")
        elif cls is TrainConfig and key == "manifold":
            kwargs[key] = _manifold_section(value)
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {err}") from err


def _manifold_section(value: Any) -> dict:
    from plm.manifold import ManifoldConfig

    if value is None:
        return ManifoldConfig().to_dict()
    if not isinstance(value, Mapping):
        raise ConfigError(f"manifold must be a mapping; got {value!r}")
    hints = typing.get_type_hints(ManifoldConfig)
    out = ManifoldConfig().to_dict()
    for key, v in value.items():
        if key not in hints:
            raise _unknown(f"manifold.{key}")
        out[key] = _coerce(v, hints[key], f"manifold.{key}")
    return out


def deep_merge(base: dict, update: Mapping[str, Any], prefix: str = "") -> dict:
    """``base`` updated by ``update``, nested mappings merged key by key (neither is modified)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, prefix + key + ".")
        else:
            out[key] = value
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"loss.delta=1.2"`` → (``["loss", "delta"]``, 1.2); the value is parsed as a YAML scalar.

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. loss.delta=1.2)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
    return key.split("."), value


def overrides_to_dict(items: Sequence[str]) -> dict:
    """Nested dict from dotted ``key=value`` items (later items win)."""
    out: dict = {}
    for item in items:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier value of {part!r}")
            node = nxt
        node[path[-1]] = value
    return out


# ---------------------------------------------------------------------------------- presets

#: Per-dataset defaults layered under files and overrides.
DATASET_PRESETS: dict[str, dict] = {
    # tuned on the validation classes (3, 4) only: see configs/fashion_mnist_frozen.yaml
    "fashion-mnist": {"epochs": 6, "model": {"image_size": 64}, "sampler": {"batches_per_epoch": 100},
                      "eval": {"val_limit": 3000}},
    # 49 Latin classes (12 held out for validation) / 42 Greek and Cyrillic classes: docs/results.md
    "glyphs": {"epochs": 10, "data": {"val_classes": 12}, "model": {"image_size": 64}},
    "digits": {"model": {"image_size": 32}, "sampler": {"batch_size": 60}, "proxies": {"num": 20},
               "kmeans": {"num_clusters": 20}},
    "sop": {"ema": {"momentum": 0.9}, "sampler": {"k": 2}, "eval": {"recall_at": [1, 10, 100, 1000]}},
}


def default_config(dataset: str = "fashion-mnist", method: str = "plm", mode: str = "frozen",
                   overrides: Optional[Mapping[str, Any] | Sequence[str]] = None, **kwargs: Any) -> TrainConfig:
    """The default configuration for a dataset, method and mode, with optional overrides.

    Args:
        dataset: dataset name.
        method: ``plm``, ``stml`` or ``kmeans``.
        mode: ``frozen`` or ``finetune``.
        overrides: a nested dict, or dotted ``key=value`` strings.
        **kwargs: top-level keys (``epochs=3``) or nested sections (``loss={"delta": 1.2}``).

    Raises:
        ConfigError: unknown key or invalid value.
    """
    data: dict = {"dataset": dataset, "method": method, "mode": mode}
    data = deep_merge(data, DATASET_PRESETS.get(dataset, {}))
    if overrides:
        data = deep_merge(data, overrides_to_dict(overrides) if not isinstance(overrides, Mapping) else overrides)
    data = deep_merge(data, kwargs)
    return TrainConfig.from_dict(data)


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML config file as a dict.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: not YAML, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return dict(data)


def resolve_config(file: Optional[str | os.PathLike] = None, flags: Optional[Mapping[str, Any]] = None,
                   overrides: Sequence[str] = ()) -> TrainConfig:
    """Layer defaults < dataset preset < YAML file < flags < ``key=value`` overrides.

    Args:
        file: YAML config file (optional).
        flags: dotted-key values from named command-line flags (``None`` values are ignored).
        overrides: ``key=value`` strings.
    """
    file_data = read_yaml(file) if file else {}
    flag_data: dict = {}
    for key, value in (flags or {}).items():
        if value is None:
            continue
        node = flag_data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    over = overrides_to_dict(overrides)
    layered = deep_merge(deep_merge(file_data, flag_data), over)
    dataset = layered.get("dataset", "fashion-mnist")
    base: dict = {}
    if isinstance(dataset, str):
        base = deep_merge(base, DATASET_PRESETS.get(dataset, {}))
    return TrainConfig.from_dict(deep_merge(base, layered))


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += config_diff(va, vb, prefix + key + ".")
        elif va != vb:
            out.append(prefix + key)
    return out
