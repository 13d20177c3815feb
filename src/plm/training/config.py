"""Training configuration: the schema of ``plm train`` (nested dataclasses), presets and layering.

A :class:`TrainConfig` is built in layers, each overriding the one before:

1. :func:`default_config` – library defaults plus a small preset per dataset (image size,
   validation split, SOP's momentum and k);
2. a YAML file (``plm train --config FILE``);
3. the named flags of ``plm train`` (``--dataset``, ``--epochs`` …);
4. dotted ``key=value`` overrides (``loss.delta=1.2``), values parsed as YAML scalars.

The engine (coercion, unknown keys with suggestions, YAML, overrides) is :mod:`plm.utils.config`;
each section lives next to the code it configures: ``data`` (:class:`plm.data.config.DataConfig`),
``model`` (:class:`plm.models.section.ModelSection`), ``manifold``
(:class:`plm.manifold.ManifoldConfig`), ``loss`` and ``proxies`` (:mod:`plm.losses.config`); the
training loop's own sections are here. Every section validates its values in ``__post_init__``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from plm.data.config import DataConfig
from plm.losses.config import SIMILARITIES, LossConfig, ProxyConfig
from plm.manifold.config import ManifoldConfig
from plm.models.section import ModelSection
from plm.training.methods.kmeans import KMeansConfig
from plm.training.methods.stml import STMLConfig
from plm.utils.choices import MODES
from plm.utils.config import (
    MAX_SEED,
    ConfigError,
    build_config,
    check,
    check_choice,
    check_int,
    check_positive,
    config_diff,
    deep_merge,
    dotted_to_dict,
    overrides_to_dict,
    parse_override,
    read_yaml,
    to_dict,
)
from plm.utils.config import valid_keys as _schema_keys
from plm.utils.device import AMP_MODES, DEVICES

__all__ = [
    "ConfigError", "DataConfig", "EMAConfig", "EvalConfig", "KMeansConfig", "LogConfig", "LossConfig",
    "ManifoldConfig", "ModelSection", "OptimConfig", "ProxyConfig", "STMLConfig", "SamplerConfig", "TrainConfig",
    "config_diff", "deep_merge", "default_config", "overrides_to_dict", "parse_override", "read_yaml",
    "resolve_config", "valid_keys",
]

SCHEDULES = ("cosine", "constant")
#: ``recompute``: the backbone's activations in finetune mode (see :class:`TrainConfig`)
RECOMPUTE = ("auto", "on", "off")
EVAL_MODELS = ("student", "teacher")
#: selection criteria without a validation split (``eval.label_free``)
LABEL_FREE_CRITERIA = ("lf_agreement", "lf_rank", "train_pair_loss", "last_epoch")


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
        check_positive("sampler.batch_size", self.batch_size)
        check(isinstance(self.k, int) and self.k >= 2,
              f"sampler.k must be an integer >= 2 (each seed comes with its k-1 nearest neighbours); got {self.k!r}")
        check_positive("sampler.batches_per_epoch", self.batches_per_epoch, allow_none=True)
        check(self.batch_size % self.k == 0,
              f"sampler.batch_size ({self.batch_size}) must be a multiple of sampler.k ({self.k})")


@dataclass
class EMAConfig:
    """Momentum teacher: φ ← m·φ + (1−m)·θ after every step."""

    momentum: float = 0.999

    def __post_init__(self) -> None:
        check(isinstance(self.momentum, (int, float)) and 0.0 <= self.momentum <= 1.0,
              f"ema.momentum must be in [0, 1]; got {self.momentum!r}")


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
            check_positive(f"optim.{name}", getattr(self, name))
        for name in ("weight_decay", "warmup_epochs"):
            check_positive(f"optim.{name}", getattr(self, name), allow_zero=True)
        check_choice("optim.schedule", self.schedule, SCHEDULES)
        check_positive("optim.grad_clip", self.grad_clip, allow_none=True)


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
        min_gain: the smallest validation MAP@R gain over the pretrained features that counts as
            "training helped" (see :mod:`plm.training.selection`).
        confidence: the gain must also be significant at this one-sided level over the validation
            classes (a paired t-test of the class gains; 0 = no test).
        signals: record the label-free scores of :mod:`plm.evaluation.label_free` every validated
            epoch (``lf_*`` columns); ``None`` = only without a validation split.
        label_free: the selection criterion without a validation split (an unlabelled folder):
            ``last_epoch`` (the default: it tracks validation MAP@R best of the four on the labelled
            benchmarks, docs/results.md), ``lf_agreement`` (k-NN agreement under augmentation,
            higher is better), ``lf_rank`` (effective rank, higher) or ``train_pair_loss`` (mean
            pair loss, lower).
    """

    every: int = 1
    batch_size: int = 128
    model: str = "student"
    val_limit: Optional[int] = None
    test_limit: Optional[int] = None
    recall_at: Optional[list[int]] = None
    nmi: bool = True
    baseline: bool = True
    min_gain: float = 0.0
    confidence: float = 0.95
    signals: Optional[bool] = None
    label_free: str = "last_epoch"

    def __post_init__(self) -> None:
        check_positive("eval.every", self.every)
        check_positive("eval.min_gain", self.min_gain, allow_zero=True)
        check(isinstance(self.confidence, (int, float)) and not isinstance(self.confidence, bool)
              and 0.0 <= self.confidence < 1.0, f"eval.confidence must be in [0, 1); got {self.confidence!r}")
        check_choice("eval.label_free", self.label_free, LABEL_FREE_CRITERIA)
        check_positive("eval.batch_size", self.batch_size)
        check_choice("eval.model", self.model, EVAL_MODELS)
        check_positive("eval.val_limit", self.val_limit, allow_none=True)
        check_positive("eval.test_limit", self.test_limit, allow_none=True)
        if self.recall_at is not None:
            check(len(self.recall_at) > 0 and all(isinstance(k, int) and k > 0 for k in self.recall_at),
                  f"eval.recall_at must be a list of positive integers; got {self.recall_at!r}")


@dataclass
class LogConfig:
    """Progress bar and TensorBoard (used when installed)."""

    progress: bool = True
    tensorboard: bool = True


@dataclass
class TrainConfig:
    """Everything ``plm train`` needs; saved as ``config.yaml`` next to the outputs.

    Attributes:
        dataset: dataset name (``plm.data.DATASETS``).
        data_root: dataset root folder.
        method: a name of :data:`plm.training.methods.METHODS` (``plm``, ``stml``, ``kmeans``).
        mode: ``frozen`` (cached backbone features; trains the embedding head, its teacher and the
            proxies), ``finetune`` (the whole network) or ``auto``: ``finetune`` on a GPU or when
            the training split has at most ``finetune_max_images`` images counted at 224 px,
            ``frozen`` otherwise (:func:`plm.training.sizing.resolve_mode`; resolved before any
            feature extraction, with a notice; ``config.yaml`` records it).
        finetune_max_images: the largest training split ``mode: auto`` fine-tunes on the CPU,
            counted at 224 px (a 112-px image counts as a quarter of one): 400 images, about 20,000
            image passes for 10 epochs.
        similarity: ``continuous`` PL similarity or the ``binary`` same-piece ablation.
        epochs: training epochs.
        seed: seed of every random choice (runs are reproducible on CPU).
        device: ``auto``, ``cpu`` or ``cuda``.
        amp: mixed precision of the training forward passes: ``off``, ``auto``, ``bf16`` or ``fp16``
            (see :mod:`plm.utils.device`).
        threads: the most intra-op CPU threads training uses (``None``: torch's default, one per
            core). Results depend on it by rounding (a run is reproducible at a fixed count). When
            other processes hold cores, fewer threads train faster: on 2 cores with one of them
            busy, a frozen-mode epoch took 2.6-4.2 times its idle time with 2 threads and the
            same time with ``threads: 1`` (docs/benchmarks.md); training says so when it sees it.
        recompute: finetune mode: ``on`` keeps only each backbone step's input in the student's
            training pass and computes the step's activations again in the backward pass
            (:meth:`plm.models.Backbone.set_recompute`): the same gradients, one more forward
            pass per step, a fraction of the memory; ``auto`` (the default) = ``on`` on the CPU
            when ``model.freeze_bn`` is true and the backbone has steps, ``off`` otherwise.
            ``on`` needs ``model.freeze_bn`` (BatchNorm in training mode would update its
            statistics twice).
    """

    dataset: str = "fashion-mnist"
    data_root: Optional[str] = None
    method: str = "plm"
    mode: str = "auto"
    finetune_max_images: int = 400
    similarity: str = "continuous"
    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    amp: str = "off"
    threads: Optional[int] = None
    recompute: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    manifold: ManifoldConfig = field(default_factory=ManifoldConfig)
    proxies: ProxyConfig = field(default_factory=ProxyConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    stml: STMLConfig = field(default_factory=STMLConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        from plm.data import DATASETS
        from plm.training.registry import METHODS

        check_choice("dataset", self.dataset, list(DATASETS))
        check_choice("method", self.method, METHODS.names())
        check_choice("mode", self.mode, MODES)
        check_choice("recompute", self.recompute, RECOMPUTE)
        check(self.recompute != "on" or self.model.freeze_bn,
              "recompute=on needs model.freeze_bn=true: BatchNorm layers in training mode would update their "
              "running statistics again in the recomputed pass; use recompute=off (or auto)")
        check(isinstance(self.finetune_max_images, int) and self.finetune_max_images >= 0,
              f"finetune_max_images must be a non-negative integer; got {self.finetune_max_images!r}")
        check_choice("similarity", self.similarity, SIMILARITIES)
        check_choice("device", self.device, DEVICES)
        check_choice("amp", self.amp, AMP_MODES)
        check(self.threads is None or (isinstance(self.threads, int) and not isinstance(self.threads, bool)
                                       and self.threads >= 1),
              f"threads must be null (every core) or a positive integer; got {self.threads!r}")
        check(isinstance(self.epochs, int) and not isinstance(self.epochs, bool) and self.epochs >= 1,
              f"epochs must be a positive integer (>= 1); got {self.epochs!r}")
        check_int("seed", self.seed, 0, MAX_SEED, "numpy, torch, scikit-learn and faiss take it as a 32-bit integer")
        if self.mode == "finetune":
            check(not self.model.train_blocks and not self.data.views,
                  "model.train_blocks and data.views are frozen-mode options (finetune mode trains the whole "
                  "network on freshly augmented images); set them to 0 or use mode=frozen")
        METHODS.get(self.method).check_config(self)  # the method's own checks (plm.training.methods)

    @property
    def augment(self) -> bool:
        """Whether training images are augmented: ``data.augment``, or by default in finetune mode only."""
        return self.mode == "finetune" and self.data.augment is not False

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON friendly)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a nested dict (a YAML file, a checkpoint's ``config``), rejecting unknown keys and bad values.

        Raises:
            ConfigError: unknown key (the message lists the valid ones) or invalid value.
        """
        return build_config(cls, data)

    def to_yaml(self) -> str:
        """The resolved configuration as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def valid_keys(schema: Optional[type] = None) -> list[str]:
    """Every dotted key a :class:`TrainConfig` (or another schema) accepts (``loss.delta``, ``manifold.eps`` …)."""
    return _schema_keys(schema or TrainConfig)


# ---------------------------------------------------------------------------------- presets

#: Per-dataset defaults layered under files and overrides.
DATASET_PRESETS: dict[str, dict] = {
    # Presets hold only what follows from the data (image size, validation classes, sampler.k for
    # classes with few images, what an epoch can afford), never a choice tuned on the benchmark's
    # validation classes: every method setting is the library default (docs/results.md, "Defaults").
    # 18,000 training images: an epoch is 100 batches; validation on a seeded 3,000 of 12,000 images
    "fashion-mnist": {"model": {"image_size": 64}, "sampler": {"batches_per_epoch": 100},
                      "eval": {"val_limit": 3000}},
    # 64-px renderings; 49 Latin classes, 12 held out for validation / 42 Greek and Cyrillic classes
    "glyphs": {"data": {"val_classes": 12}, "model": {"image_size": 64}},
    # 72-px sprites rendered at 128 px; 140 units of the peoples, 40 held out for validation / 94 creature units
    "sprites": {"data": {"val_classes": 40}, "model": {"image_size": 128}},
    # 8-px images; 1,797 in all: small batches, few proxies and clusters
    "digits": {"model": {"image_size": 32}, "sampler": {"batch_size": 60}, "proxies": {"num": 20},
               "kmeans": {"num_clusters": 20}},
    # about 5 images per class: seeds come with one neighbour (the paper's k and teacher momentum for SOP)
    "sop": {"ema": {"momentum": 0.9}, "sampler": {"k": 2},
            "eval": {"recall_at": [1, 10, 100, 1000]}},
}


def seed_group_candidates(data: dict) -> dict:
    """``data`` (a layered config dict) with ``manifold.group_size`` set to ``sampler.k`` unless given:
    by default PLM draws each anchor's PL candidates from its seed group (a seed and its
    ``sampler.k − 1`` neighbours), chosen on the validation classes of three benchmarks
    (docs/results.md); ``manifold.group_size: null`` draws them from the nearest batch points."""
    manifold, sampler = data.get("manifold"), data.get("sampler")
    if isinstance(manifold, Mapping) and "group_size" in manifold:
        return data
    k = sampler.get("k", SamplerConfig.k) if isinstance(sampler, Mapping) else SamplerConfig.k
    return deep_merge(data, {"manifold": {"group_size": k}})


def default_config(dataset: str = "fashion-mnist", method: str = "plm", mode: str = "auto",
                   overrides: Optional[Mapping[str, Any] | Sequence[str]] = None, **kwargs: Any) -> TrainConfig:
    """The default configuration for a dataset, method and mode, with optional overrides.

    Args:
        dataset: dataset name.
        method: ``plm``, ``stml`` or ``kmeans``.
        mode: ``auto``, ``frozen`` or ``finetune``.
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
    return TrainConfig.from_dict(seed_group_candidates(data))


def resolve_config(file: Optional[str | os.PathLike] = None, flags: Optional[Mapping[str, Any]] = None,
                   overrides: Sequence[str] = ()) -> TrainConfig:
    """Layer defaults < dataset preset < YAML file < flags < ``key=value`` overrides.

    Args:
        file: YAML config file (optional).
        flags: dotted-key values from named command-line flags (``None`` values are ignored).
        overrides: ``key=value`` strings.
    """
    file_data = read_yaml(file) if file else {}
    layered = deep_merge(deep_merge(file_data, dotted_to_dict(flags or {})), overrides_to_dict(overrides))
    dataset = layered.get("dataset", "fashion-mnist")
    base: dict = {}
    if isinstance(dataset, str):
        base = deep_merge(base, DATASET_PRESETS.get(dataset, {}))
    return TrainConfig.from_dict(seed_group_candidates(deep_merge(base, layered)))
