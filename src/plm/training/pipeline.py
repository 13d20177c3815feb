"""What the two training modes feed the loop: networks, batches and embedding passes.

- :class:`FrozenPipeline`: pooled backbone features of every split are computed once (and cached
  on disk by :func:`plm.evaluation.embed_dataset`); the student is the embedding head, so a step
  costs a matrix product. Augmentation is impossible here: the features come from fixed,
  un-augmented images.
- :class:`FinetunePipeline`: the whole network is trained on (optionally augmented) images; every
  embedding pass (k-NN table, validation, test) runs the network on un-augmented images, sharded
  over processes and gathered.

Both expose the same interface to :mod:`plm.training.trainer`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from typing import Any, Optional, cast

import numpy as np
import torch
from torch import Tensor, nn

from plm.data import ImageDataset, collate_skip
from plm.data.views import AugmentedViews
from plm.models import Backbone, EmbeddingModel, ModelConfig, build_transform, create_model
from plm.models.partial import PrefixModel, TailModel
from plm.training.config import TrainConfig
from plm.training.distributed import DistContext
from plm.training.ema import EMATeacher
from plm.training.sampler import NeighborhoodSampler
from plm.training.splits import Splits

log = logging.getLogger(__name__)

#: the PCA head starts (``model.head_init``) and whether each centres the features
PCA_CENTERING = {"pca": True, "pca_uncentered": False}
#: training images (a seeded subset) on which the label-free signals are measured
SIGNAL_IMAGES = 1000


def model_config_of(config: TrainConfig) -> ModelConfig:
    """The :class:`plm.models.ModelConfig` of a training config (saved in checkpoints)."""
    m = config.model
    from plm.models.backbones import feature_width

    width = m.embed_dim if m.embed_dim is not None else feature_width(m.backbone)
    return ModelConfig(backbone=m.backbone, embed_dim=width, pooling=m.pooling, normalize=True,
                       image_size=m.image_size)


def feature_config_of(config: TrainConfig, normalize: bool = False) -> ModelConfig:
    """The head-less config of a training config: its pooled backbone features (the feature-cache key)."""
    m = config.model
    return ModelConfig(backbone=m.backbone, embed_dim=None, pooling=m.pooling, normalize=normalize,
                       image_size=m.image_size)


def build_model(config: TrainConfig) -> EmbeddingModel:
    """The pretrained embedding model with a random orthogonal head (global torch RNG); the
    pipelines then apply ``model.head_init``."""
    from plm.models.factory import build_embedder

    return build_embedder(model_config_of(config), weights=config.model.backbone_weights,
                          weights_hint="set model.backbone_weights=PATH")


class Pipeline:
    """Common interface; see the module docs."""

    student: nn.Module
    teacher: EMATeacher
    model: EmbeddingModel
    #: the teacher embeds the whole gathered global batch on every rank (cheap cached inputs), so that
    #: its embeddings are those of one process to the last bit: a matrix product's rounding can
    #: depend on how many rows it multiplies, and the PL model's choices would follow it
    global_teacher_pass: bool = False

    def __init__(self, config: TrainConfig, device: torch.device, ctx: DistContext, progress: bool):
        self.config, self.device, self.ctx, self.progress = config, device, ctx, progress and ctx.is_main

    # -- parameters
    def param_groups(self) -> list[dict]:
        """AdamW groups: ``backbone`` (finetune only) and ``embedding``; decay on weights only."""
        o = self.config.optim
        lrs = {"backbone": o.lr_backbone, "embedding": o.lr_embedding}
        frozen = self.student is self.model.head
        groups = []
        for group in ("backbone", "embedding"):
            params = [(n, p) for n, p in self.student.named_parameters() if p.requires_grad
                      and ("embedding" if frozen or n.startswith("head.") else "backbone") == group]
            decay = [p for _, p in params if p.ndim > 1]
            no_decay = [p for _, p in params if p.ndim <= 1]
            if decay:
                groups.append({"name": group, "params": decay, "lr": lrs[group], "weight_decay": o.weight_decay})
            if no_decay:
                groups.append({"name": group, "params": no_decay, "lr": lrs[group], "weight_decay": 0.0})
        return groups

    def set_train(self) -> None:
        """Student in training mode (BatchNorm frozen when configured)."""
        self.student.train()

    # -- to be provided by subclasses
    @property
    def num_train(self) -> int:
        raise NotImplementedError

    def batches(self, sampler: NeighborhoodSampler) -> Iterator[tuple[Tensor, Tensor]]:
        """(inputs, positions) of this rank's batches of the sampler's current epoch."""
        raise NotImplementedError

    def train_embeddings(self, net: str = "teacher") -> Tensor:
        """(N, d) embeddings of every training item (un-augmented), on every rank."""
        raise NotImplementedError

    def first_pass(self) -> Tensor:
        """The run's first data pass: the teacher's embeddings of the training set (:meth:`train_embeddings`).

        In finetune mode it also drops the training images that cannot be read (skipped and counted),
        so :attr:`num_train`, the sampler's size, is final only after it; a resumed run loads its
        networks before it, so that it serves the resumed epoch's k-NN table.
        """
        return self.train_embeddings("teacher")

    def embed_split(self, split: ImageDataset, net: str = "student") -> Optional[tuple[np.ndarray, np.ndarray]]:
        """(vectors, labels) of a split on rank 0 (``None`` on the others)."""
        raise NotImplementedError

    def baseline_split(self, split: ImageDataset) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """(vectors, labels) of the pretrained backbone's L2-normalised pooled features (rank 0)."""
        raise NotImplementedError

    def _net(self, which: str) -> nn.Module:
        if which not in ("student", "teacher"):
            raise ValueError(f"net must be 'student' or 'teacher', got {which!r}")
        return self.student if which == "student" else self.teacher.module

    def export_state(self, which: str) -> dict:
        """Full :class:`EmbeddingModel` state dict with the chosen network's weights (for load_model)."""
        raise NotImplementedError

    def pretrained_state(self) -> dict:
        """State dict of the pretrained model (backbone, no head) that :meth:`pretrained_model_config` describes."""
        raise NotImplementedError

    def signal_pairs(self, net: str) -> Optional[tuple[Tensor, Tensor]]:
        """(clean, augmented view) embeddings of a seeded subset of training images by ``net``
        (``student``, ``teacher`` or ``pretrained``) for :mod:`plm.evaluation.label_free`, on
        every rank; ``None`` where the pipeline cannot give them."""
        return None

    def pretrained_model_config(self) -> ModelConfig:
        """The model of the pretrained features: the backbone's L2-normalised pooled features, no head."""
        return feature_config_of(self.config, normalize=True)

    def load_export_state(self, state: dict) -> None:
        """Load an :meth:`export_state` into :attr:`model` (used for the final test evaluation)."""
        self.model.load_state_dict(state)


class FrozenPipeline(Pipeline):
    """Cached inputs (pooled features, or prefix maps with ``model.train_blocks``); trains the head
    (and the backbone's last steps) on them (see module docs)."""

    global_teacher_pass = True

    def __init__(self, config: TrainConfig, splits: Splits, device: torch.device, ctx: DistContext,
                 progress: bool = True, fresh: bool = True):
        super().__init__(config, device, ctx, progress)
        if config.data.augment:
            log.info("frozen mode: backbone features are computed once from un-augmented images; for augmentation "
                     "use data.views=N (N cached augmented views of every training image) or mode=finetune")
        self.model = build_model(config)
        self.model.requires_grad_(False)
        m = config.model
        steps = len(self.model.backbone.units())
        if m.train_blocks >= steps:
            raise ValueError(f"model.train_blocks={m.train_blocks}: {m.backbone} has {steps} steps; train at most "
                             f"{steps - 1} of them in frozen mode (or use mode=finetune)")
        self.splits = splits
        self._inputs: dict[int, tuple[Tensor, np.ndarray]] = {}
        # the inputs the student consumes; its fingerprint does not depend on the randomly initialised head
        self.tail: Optional[TailModel] = None
        if m.train_blocks:
            start = steps - m.train_blocks
            prefix = PrefixModel(self.model.backbone, feature_config_of(config), start)
            self._input_model: EmbeddingModel = prefix
            self.tail = TailModel(self.model, start, prefix.map_shape)
        else:
            self._input_model = EmbeddingModel(self.model.backbone, feature_config_of(config))
        self.train_features, _ = self._split_inputs(splits.train)
        # the pretrained model's pooled features, from the cached inputs (the tail before training)
        self._pretrained_tail = copy.deepcopy(self.tail).to(device).eval() if self.tail is not None else None
        if fresh and m.head_init in PCA_CENTERING:
            pooled = self._pretrained_pooled(self.train_features).cpu()
            self.model.head.init_pca(pooled, center=PCA_CENTERING[m.head_init])
        self.student: nn.Module = self.model.head if self.tail is None else self.tail.trainable_()
        self.student.to(device)
        ctx.broadcast_module(self.student)  # every rank starts from rank 0's head
        if self.tail is None:
            self.student.requires_grad_(True)
        self.train_views: Optional[Tensor] = None
        if config.data.views:
            n = self.num_train
            views = AugmentedViews(splits.train, config.data.views, self._input_model.preprocess.resize_size,
                                   self._input_model.preprocess.crop_scale)
            flat, _ = self._split_inputs(views)
            if flat.shape[0] != config.data.views * n:
                raise RuntimeError("some augmented views could not be read although their images could")
            self.train_views = flat.reshape(config.data.views, n, -1)
        self.set_train()
        self.teacher = EMATeacher(self.student, config.ema.momentum).to(device)

    def _split_inputs(self, ds: ImageDataset) -> tuple[Tensor, np.ndarray]:
        from plm.evaluation import embed_dataset

        key = id(ds)
        if key not in self._inputs:
            cache = None if self.config.data.cache else False
            kw: dict[str, Any] = dict(batch_size=self.config.eval.batch_size, features=True, cache_dir=cache,
                                      device=self.device, num_workers=self.config.data.num_workers)
            if self.ctx.enabled and cache is not False:  # rank 0 fills the cache, the others read it
                if self.ctx.is_main:
                    emb = embed_dataset(self._input_model, ds, progress=self.progress, **kw)
                self.ctx.barrier()
                if not self.ctx.is_main:
                    emb = embed_dataset(self._input_model, ds, progress=False, **kw)
            else:
                emb = embed_dataset(self._input_model, ds, progress=self.progress, **kw)
            if emb.skipped:
                log.warning("%s/%s: skipped %d unreadable image(s), e.g. %s", ds.name, ds.split, len(emb.skipped),
                            ", ".join(emb.skipped[:3]))
            self._inputs[key] = (torch.from_numpy(emb.vectors).to(self.device), emb.labels)
        return self._inputs[key]

    def _pretrained_pooled(self, inputs: Tensor) -> Tensor:
        """The pretrained backbone's pooled features of cached inputs."""
        if self._pretrained_tail is None:
            return inputs
        return self._apply(self._pretrained_tail.pooled, inputs)

    def set_train(self) -> None:
        self.student.train()
        if self.tail is not None and self.config.model.freeze_bn:
            freeze_batchnorm(self.student)

    def param_groups(self) -> list[dict]:
        if self.tail is None:
            return super().param_groups()
        o = self.config.optim
        groups = []
        for group, lr in (("backbone", o.lr_backbone), ("embedding", o.lr_embedding)):
            params = [(n, p) for n, p in self.student.named_parameters() if p.requires_grad
                      and ("embedding" if n.startswith("model.head.") else "backbone") == group]
            for decay in (True, False):
                chosen = [p for _, p in params if (p.ndim > 1) == decay]
                if chosen:
                    groups.append({"name": group, "params": chosen, "lr": lr,
                                   "weight_decay": o.weight_decay if decay else 0.0})
        return groups

    @property
    def num_train(self) -> int:
        return int(self.train_features.shape[0])

    def batches(self, sampler: NeighborhoodSampler) -> Iterator[tuple[Tensor, Tensor]]:
        for positions in sampler:
            idx = torch.as_tensor(positions, dtype=torch.long, device=self.device)
            if self.train_views is None:
                yield self.train_features[idx], idx
            else:  # one of the cached augmented views of each image, drawn from the epoch's seeded RNG
                view = torch.randint(self.train_views.shape[0], (len(idx),)).to(self.device)
                yield self.train_views[view, idx], idx

    @torch.no_grad()
    def _apply(self, net: Callable[[Tensor], Tensor], feats: Tensor, chunk: int = 2048) -> Tensor:
        if not len(feats):
            return torch.zeros(0, self.model.out_dim, device=feats.device)
        return torch.cat([net(feats[i:i + chunk]) for i in range(0, len(feats), chunk)])

    def _run(self, which: str, feats: Tensor) -> Tensor:
        module = self._net(which)
        was_training = module.training
        module.eval()
        out = self._apply(module, feats)
        module.train(was_training)
        if was_training and module is self.student:
            self.set_train()  # BatchNorm frozen again
        return out

    def train_embeddings(self, net: str = "teacher") -> Tensor:
        return self._run(net, self.train_features)

    def embed_split(self, split: ImageDataset, net: str = "student") -> Optional[tuple[np.ndarray, np.ndarray]]:
        feats, labels = self._split_inputs(split)
        if not self.ctx.is_main:
            return None
        return self._run(net, feats).cpu().numpy(), labels

    def baseline_split(self, split: ImageDataset) -> Optional[tuple[np.ndarray, np.ndarray]]:
        feats, labels = self._split_inputs(split)
        if not self.ctx.is_main:
            return None
        return torch.nn.functional.normalize(self._pretrained_pooled(feats), dim=1).cpu().numpy(), labels

    def _signal_features(self) -> tuple[Tensor, Tensor]:
        """Cached inputs of the signal subset: clean and one seeded augmented view each."""
        if getattr(self, "_signal", None) is None:
            n = self.num_train
            idx = np.sort(np.random.default_rng(0).choice(n, size=min(n, SIGNAL_IMAGES), replace=False))
            subset = self.splits.train.subset(idx)
            pre = self._input_model.preprocess
            views, _ = self._split_inputs(AugmentedViews(subset, 1, pre.resize_size, pre.crop_scale, seed=1))
            if len(views) != len(idx):
                raise RuntimeError("some augmented views could not be read although their images could")
            self._signal = (self.train_features[torch.as_tensor(idx, device=self.device)], views)
        return self._signal

    def signal_pairs(self, net: str) -> Optional[tuple[Tensor, Tensor]]:
        clean, views = self._signal_features()
        if net == "pretrained":
            norm = torch.nn.functional.normalize
            return norm(self._pretrained_pooled(clean), dim=1), norm(self._pretrained_pooled(views), dim=1)
        return self._run(net, clean), self._run(net, views)

    def export_state(self, which: str) -> dict:
        net = self._net(which)
        if self.tail is not None:
            return {k[len("model."):]: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items() if not k.startswith("head.")}
        state.update({f"head.{k}": v.detach().cpu().clone() for k, v in net.state_dict().items()})
        return state

    def load_export_state(self, state: dict) -> None:
        if self.tail is not None:
            self.model.load_state_dict(state)
            return
        head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
        self.model.head.load_state_dict(head)

    def pretrained_state(self) -> dict:
        model = self._pretrained_tail.model if self._pretrained_tail is not None else self.model
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("head.")}


def embed_distributed(model: EmbeddingModel, dataset: ImageDataset, ctx: DistContext, batch_size: int = 128,
                      device: torch.device | str = "cpu", num_workers: int = 0,
                      progress: bool = False) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """Embed a dataset with every rank doing a contiguous shard (uneven sizes, no duplicates).

    Returns, on every rank, (vectors (N', d) on ``device``, labels (N',), dataset positions (N',))
    in dataset order, N' ≤ N leaving out unreadable images. Single process: a plain
    :func:`plm.evaluation.embed_dataset` without cache.
    """
    from plm.evaluation import embed_dataset

    shard = ctx.shard(len(dataset))
    sub = dataset.subset(shard) if ctx.enabled else dataset
    emb = embed_dataset(model, sub, batch_size=batch_size, cache_dir=False, device=device, num_workers=num_workers,
                        progress=progress and ctx.is_main)
    pos_of = {item: p for p, item in enumerate(sub.ids)}
    local = np.asarray([pos_of[i] for i in emb.ids], dtype=np.int64)
    kept = shard[local] if ctx.enabled else local
    vec = torch.from_numpy(emb.vectors).to(device)
    if ctx.enabled:
        vec = ctx.gather_uneven(vec)
        kept = ctx.gather_uneven(torch.from_numpy(kept).to(device)).cpu().numpy()
    return vec, dataset.labels[kept], kept


def freeze_batchnorm(model: nn.Module) -> None:
    """BatchNorm layers in eval mode (running statistics kept) with frozen affine weights."""
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.eval()
            for p in mod.parameters(recurse=False):
                p.requires_grad_(False)


def recompute_activations(config: TrainConfig, device: torch.device, backbone: Backbone) -> bool:
    """Whether the student's backbone recomputes its activations in the backward pass (``config.recompute``):
    ``auto`` on the CPU, where a fine-tuning step at 224 px would otherwise hold about 80 MB per
    image of the batch, when BatchNorm is frozen and the backbone has steps."""
    if config.recompute != "auto":
        return config.recompute == "on"
    return device.type == "cpu" and config.model.freeze_bn and backbone.has_units


class FinetunePipeline(Pipeline):
    """The whole network is trained on images (see module docs)."""

    def __init__(self, config: TrainConfig, splits: Splits, device: torch.device, ctx: DistContext,
                 progress: bool = True, fresh: bool = True):
        super().__init__(config, device, ctx, progress)
        self.model = build_model(config).to(device)
        self.model.backbone.set_recompute(recompute_activations(config, device, self.model.backbone))
        self.student = self.model
        self.splits = splits
        self.train_ds = splits.train
        head_init = config.model.head_init
        if fresh and head_init in PCA_CENTERING:  # one pass of the pretrained backbone over the images
            self.model.head.init_pca(self._pretrained_train_features(), center=PCA_CENTERING[head_init])
        ctx.broadcast_module(self.model.head)  # every rank starts from rank 0's head
        self._train_transform = build_transform(self.model.preprocess, train=config.augment)
        self.set_train()
        self.teacher = EMATeacher(self.student, config.ema.momentum).to(device)
        # the pretrained features are a candidate of the model selection (validation) and the test baseline
        self._pretrained_backbone: Optional[dict] = None
        signals = config.eval.signals if config.eval.signals is not None else splits.val is None
        if splits.val is not None or (config.eval.baseline and splits.test is not None) or signals:
            self._pretrained_backbone = {k: v.detach().cpu().clone()
                                         for k, v in self.model.backbone.state_dict().items()}

    def _pretrained_train_features(self) -> Tensor:
        """Pooled features of the training images from the (still pretrained) backbone, on CPU.

        A single process reads and fills the feature cache that frozen mode uses (same feature
        model, same key); several processes shard the pass and gather it.
        """
        from plm.evaluation import embed_dataset

        features_model = EmbeddingModel(self.model.backbone, feature_config_of(self.config))
        if self.ctx.enabled or not self.config.data.cache:
            return self._embed(features_model, self.train_ds, self.progress)[0].cpu()
        emb = embed_dataset(features_model, self.train_ds, batch_size=self.config.eval.batch_size, features=True,
                            device=self.device, num_workers=self.config.data.num_workers, progress=self.progress)
        return torch.from_numpy(emb.vectors)

    def set_train(self) -> None:
        self.student.train()
        if self.config.model.freeze_bn:
            freeze_batchnorm(self.student)

    @property
    def num_train(self) -> int:
        return len(self.train_ds)

    def batches(self, sampler: NeighborhoodSampler) -> Iterator[tuple[Tensor, Tensor]]:
        before = self.train_ds.transform
        self.train_ds.transform = self._train_transform
        loader = torch.utils.data.DataLoader(self.train_ds, batch_sampler=sampler, collate_fn=collate_skip,
                                             num_workers=self.config.data.num_workers,
                                             pin_memory=self.device.type == "cuda")
        try:
            for images, _labels, positions, dropped in loader:  # labels are never used
                if dropped[0]:
                    raise RuntimeError(f"{dropped[0]} training image(s) became unreadable during training")
                yield images.to(self.device, non_blocking=True), positions.to(self.device)
        finally:
            self.train_ds.transform = before

    def _model(self, net: str) -> EmbeddingModel:
        # here the student is the whole model, and the teacher's module a copy of it
        return cast(EmbeddingModel, self._net(net))

    def _embed(self, module: EmbeddingModel, ds: ImageDataset, progress: bool) -> tuple[Tensor, np.ndarray, np.ndarray]:
        return embed_distributed(module, ds, self.ctx, batch_size=self.config.eval.batch_size, device=self.device,
                                 num_workers=self.config.data.num_workers, progress=progress)

    def train_embeddings(self, net: str = "teacher") -> Tensor:
        module = self._model(net)
        vec, _, kept = self._embed(module, self.train_ds, self.progress)
        if len(kept) != len(self.train_ds):  # drop unreadable images from training for good
            log.warning("%d unreadable training image(s) left out of training", len(self.train_ds) - len(kept))
            self.train_ds = self.train_ds.subset(kept)
        self.set_train()
        return vec

    def embed_split(self, split: ImageDataset, net: str = "student") -> Optional[tuple[np.ndarray, np.ndarray]]:
        vec, labels, _ = self._embed(self._model(net), split, self.progress)
        self.set_train()
        return (vec.cpu().numpy(), labels) if self.ctx.is_main else None

    def _pretrained_model(self) -> EmbeddingModel:
        """The pretrained features as a model: the kept pretrained backbone, pooled and L2-normalised."""
        assert self._pretrained_backbone is not None
        ref = EmbeddingModel(create_model(model_config_of(self.config), pretrained=False).backbone,
                             feature_config_of(self.config, normalize=True))
        ref.backbone.load_state_dict(self._pretrained_backbone)
        return ref.to(self.device)

    def baseline_split(self, split: ImageDataset) -> Optional[tuple[np.ndarray, np.ndarray]]:
        if self._pretrained_backbone is None:
            return None
        vec, labels, _ = self._embed(self._pretrained_model(), split, self.progress)
        return (vec.cpu().numpy(), labels) if self.ctx.is_main else None

    def signal_pairs(self, net: str) -> Optional[tuple[Tensor, Tensor]]:
        if self._pretrained_backbone is None and net == "pretrained":
            return None
        if getattr(self, "_signal_sets", None) is None:  # the same seeded subset and views as frozen mode
            n = len(self.train_ds)
            idx = np.sort(np.random.default_rng(0).choice(n, size=min(n, SIGNAL_IMAGES), replace=False))
            subset = self.train_ds.subset(idx)
            pre = self.model.preprocess
            self._signal_sets = (subset, AugmentedViews(subset, 1, pre.resize_size, pre.crop_scale, seed=1))
        clean_ds, views_ds = self._signal_sets
        module = self._pretrained_model() if net == "pretrained" else self._model(net)
        clean, _, kept = self._embed(module, clean_ds, False)
        views, _, kept_views = self._embed(module, views_ds, False)
        self.set_train()
        if not np.array_equal(kept, kept_views):
            raise RuntimeError("some augmented views could not be read although their images could")
        return clean, views

    def export_state(self, which: str) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self._net(which).state_dict().items()}

    def pretrained_state(self) -> dict:
        if self._pretrained_backbone is None:
            raise RuntimeError("the pretrained backbone was not kept (no validation or test split)")
        return {f"backbone.{k}": v.clone() for k, v in self._pretrained_backbone.items()}


def build_pipeline(config: TrainConfig, splits: Splits, device: torch.device, ctx: DistContext,
                   progress: bool = True, fresh: bool = True) -> Pipeline:
    """The pipeline of ``config.mode``; ``fresh=False`` (resuming) skips the head initialisation pass."""
    cls = FrozenPipeline if config.mode == "frozen" else FinetunePipeline
    return cls(config, splits, device, ctx, progress, fresh)
