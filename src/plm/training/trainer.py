"""The training loop: a thin layer over the pipeline, sampler, method, EMA teacher and optimiser.

Per epoch: re-seed (from seed, epoch, rank), embed the training set with the teacher
(un-augmented), build the k-NN table (rank 0, broadcast), let the method refresh its state, run
the steps, validate, write ``last.pt`` (and ``best.pt`` when the selection score improves) and the
metrics CSV. At the end the best checkpoint is evaluated once on the test split
(``metrics.json``, the keys of ``plm eval --json``).

Resuming restores model, teacher, method (proxies), optimiser, scheduler, epoch, sampler and RNG
states from ``last.pt``; every epoch's randomness is a function of (seed, epoch, rank), so a run
interrupted at any point and resumed ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from plm.errors import TrainingDivergedError, UserError
from plm.evaluation.metrics import default_ks
from plm.models import EmbeddingModel
from plm.training.checkpoint import (
    checkpoint_paths,
    commit_checkpoints,
    load_checkpoint,
    recover_checkpoints,
    rng_state,
    set_rng_state,
)
from plm.training.config import TrainConfig, config_diff
from plm.training.distributed import DistContext, init_distributed
from plm.training.history import TensorBoardLogger, write_csv
from plm.training.methods import BatchView, build_method
from plm.training.optim import build_optimizer, build_scheduler
from plm.training.pipeline import build_pipeline, model_config_of
from plm.training.sampler import NeighborhoodSampler
from plm.training.selection import PRETRAINED, Judgement, judge, verdict
from plm.training.sizing import fit_to_data
from plm.training.splits import load_splits
from plm.utils.device import autocast
from plm.utils.io import atomic_write_bytes, atomic_write_json
from plm.utils.paths import CHECKPOINT, CONFIG_YAML, METRICS_CSV, METRICS_JSON, SUMMARY_JSON, check_run_folder

log = logging.getLogger(__name__)

#: the files of a run folder and the kind each must be to be replaced (``last.pt`` is never
#: replaced without ``--resume``, which reads it first)
RUN_FILES = {"config.yaml": CONFIG_YAML, "metrics.csv": METRICS_CSV, "metrics.json": METRICS_JSON,
             "summary.json": SUMMARY_JSON, "best.pt": CHECKPOINT}

#: config keys that may differ between a run and its resumption
RESUME_FREE_KEYS = ("device", "amp", "log.progress", "log.tensorboard", "data.num_workers", "eval.batch_size",
                    "model.head_init")  # the head comes from the checkpoint


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        config: the resolved configuration.
        out_dir: the output folder.
        history: one dict per epoch (the rows of ``metrics.csv``).
        selection: ``val_map_at_r`` (validation MAP@R, higher is better; the pretrained features
            and the untrained model, epoch 0, are candidates: :mod:`plm.training.selection`) or
            ``train_pair_loss`` (mean training loss of the pair term, lower is better; used
            without a validation split).
        best_epoch: the selected epoch (1-based; 0 = the untrained model; ``-1``
            (:data:`~plm.training.selection.PRETRAINED`) = the pretrained features, kept because no
            epoch beat them on validation by more than the margin).
        training_helped: whether a trained epoch beat the pretrained features on validation
            (``None`` without a validation split: it cannot be known).
        verdict: the one line that says so.
        best_checkpoint: path of ``best.pt``.
        last_checkpoint: path of ``last.pt``.
        test_metrics: test-split metrics of the best checkpoint (``None`` without a labelled test split).
        baseline_metrics: test-split metrics of the pretrained backbone (``None`` when not computed).
        model: the best model (CPU, eval mode).
    """

    config: TrainConfig
    out_dir: Path
    history: list[dict[str, Any]]
    selection: str
    best_epoch: int
    training_helped: Optional[bool]
    verdict: str
    best_checkpoint: Path
    last_checkpoint: Path
    test_metrics: Optional[dict[str, Any]] = None
    baseline_metrics: Optional[dict[str, Any]] = None
    model: Optional[EmbeddingModel] = field(default=None, repr=False)


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` uses ``cuda:LOCAL_RANK`` in distributed runs
    (:func:`plm.utils.device.resolve_device`).

    Raises:
        UserError: ``cuda`` requested without a GPU.
    """
    from plm.utils.device import resolve_device as _resolve

    return _resolve(name, ctx.local_rank if ctx.enabled else None)


def _resume_view(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict as it takes effect: options a checkpoint of an older version did not know take
    their defaults, and ``data.augment`` is what it means in the mode (old checkpoints stored
    ``true`` in frozen mode)."""
    from plm.utils.config import deep_merge

    config = deep_merge(TrainConfig().to_dict(), config)
    out = {**config, "data": dict(config.get("data", {}))}
    augment = out["data"].get("augment")
    out["data"]["augment"] = config.get("mode") == "finetune" and augment is not False
    return out


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's epoch (independent streams for every (seed, epoch, rank))."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class Trainer:
    """One training run; :func:`train` is the usual entry point.

    Args:
        config: resolved configuration.
        out_dir: output folder (checkpoints, ``config.yaml``, ``metrics.csv``, ``metrics.json``).
        progress: show progress bars (rank 0 only).
        resume: continue from ``out_dir/last.pt`` when it exists.
        ctx: distributed context; default from the environment (single process without torchrun).
        force: replace files in ``out_dir`` with plm's names (``config.yaml`` …) that plm did not write.
    """

    def __init__(self, config: TrainConfig, out_dir: str | Path, progress: bool = True, resume: bool = False,
                 ctx: Optional[DistContext] = None, force: bool = False):
        self.config = config
        self.out = Path(out_dir)
        self.ctx = ctx if ctx is not None else init_distributed(
            "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu")
        self.device = resolve_device(config.device, self.ctx)
        from plm.utils.device import amp_dtype

        self.amp = amp_dtype(config.amp, self.device)
        # float16 gradients underflow without loss scaling; bfloat16 has float32's range
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == torch.float16 else None
        self.progress = progress and config.log.progress
        self.resume_requested = resume
        self.force = force
        self.last_path, self.best_path = checkpoint_paths(self.out)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.global_step = 0
        self.best: dict[str, Any] = {"epoch": 0, "value": None}
        self._train_emb: Optional[torch.Tensor] = None
        self._ap_pretrained: Optional[tuple[np.ndarray, np.ndarray]] = None  # validation AP@R, labels (rank 0)
        self._pretrained_scored = False
        #: set to {} to accumulate seconds per step phase (forward, method, backward_step)
        self.timings: Optional[dict[str, float]] = None
        self._setup()

    # ------------------------------------------------------------------------------ setup
    @property
    def selection(self) -> str:
        """``val_map_at_r`` with a validation split, the label-free ``eval.label_free`` without."""
        return "val_map_at_r" if self.splits.val is not None else self.config.eval.label_free

    def _setup(self) -> None:
        cfg, ctx = self.config, self.ctx
        ckpt = None
        if ctx.is_main:  # before any long work: a folder that cannot be written fails now
            check_run_folder(self.out, RUN_FILES, "--out", force=self.force)
            for action in recover_checkpoints(self.out):
                log.info("%s: %s (left by an interrupted run)", self.out, action)
        ctx.barrier()
        if self.last_path.is_file():
            if not self.resume_requested:
                raise ValueError(f"{self.out} already holds a run ({self.last_path.name}); pass --resume to continue "
                                 f"it or choose another --out")
            ckpt = load_checkpoint(self.last_path)
        elif self.resume_requested and ctx.is_main:
            log.info("no checkpoint in %s: starting from scratch", self.out)
        seed_everything(cfg.seed)
        self.splits = load_splits(cfg)
        # sizes the data cannot support (proxies, clusters, batch) are capped before any feature extraction
        cfg, notices = fit_to_data(cfg, len(self.splits.train), ctx.world_size, self.device.type)
        self.config = cfg
        if ctx.is_main:
            for line in notices:
                log.info("note: %s", line)
        if ckpt is not None:
            diff = [k for k in config_diff(_resume_view(ckpt["config"]), _resume_view(cfg.to_dict()))
                    if k not in RESUME_FREE_KEYS]
            if diff:
                raise ValueError(f"cannot resume {self.last_path}: the config differs in {', '.join(diff)} "
                                 f"(a resumed run must use the same settings; see {self.out / 'config.yaml'})")
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cfg.to_yaml().encode(), self.out / "config.yaml")
        check_batch_size(cfg, len(self.splits.train), self.device)
        self.pipeline = build_pipeline(cfg, self.splits, self.device, ctx, self.progress, fresh=ckpt is None)
        if ckpt is not None:  # networks first: the teacher pass below then serves the resumed epoch
            self.pipeline.student.load_state_dict(ckpt["student_state"])
            self.pipeline.teacher.module.load_state_dict(ckpt["teacher_state"])
        # the first teacher pass also drops unreadable training images (finetune mode)
        first = self.pipeline.train_embeddings("teacher")
        self.method = build_method(cfg, self.pipeline.model.out_dim).to(self.device)
        self.sampler = NeighborhoodSampler(self.pipeline.num_train, cfg.sampler.batch_size, cfg.sampler.k, cfg.seed,
                                            ctx.rank, ctx.world_size, cfg.sampler.batches_per_epoch)
        groups = self.pipeline.param_groups()
        method_params = [p for p in self.method.parameters() if p.requires_grad]
        if method_params:
            groups.append({"name": "proxies", "params": method_params, "lr": cfg.optim.lr_proxies, "weight_decay": 0.0})
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = build_optimizer(groups)
        steps = len(self.sampler)
        self.scheduler = build_scheduler(self.optimizer, cfg.epochs * steps,
                                         int(round(cfg.optim.warmup_epochs * steps)), cfg.optim.schedule)
        if ckpt is not None:
            self._restore(ckpt)
        else:
            self.method.prepare(first)
            ctx.broadcast_module(self.method)
        self._train_emb = first  # the k-NN table of the first epoch to run comes from this pass

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.method.load_state_dict(ckpt["method_state"])
        self.method.to(self.device)
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        self.scheduler.load_state_dict(ckpt["scheduler_state"])
        self.sampler.load_state_dict(ckpt["sampler_state"])
        set_rng_state(ckpt["rng"])
        self.start_epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.history = list(ckpt["history"])
        self.best = dict(ckpt["best"])
        if self.ctx.is_main:
            log.info("resumed %s at epoch %d/%d", self.last_path, self.start_epoch, self.config.epochs)

    # ------------------------------------------------------------------------------ steps
    def knn_table(self, emb: torch.Tensor) -> np.ndarray:
        """(N, k−1) nearest other training items of each item (rank 0 computes, all receive)."""
        from plm.neighbors import knn

        n, kk = emb.shape[0], self.config.sampler.k - 1
        if kk == 0:
            return np.zeros((n, 0), dtype=np.int64)
        table = knn(emb.float().cpu().numpy(), k=kk)[1] if self.ctx.is_main else None
        return self.ctx.broadcast_array(table, ((n, kk), torch.long), self.device)

    def step(self, inputs: torch.Tensor, positions: torch.Tensor) -> dict[str, float]:
        """One optimisation step on this rank's share of a batch; returns the global loss terms."""
        ctx, pipe = self.ctx, self.pipeline
        timings = self.timings  # None unless a benchmark is timing the steps
        t0 = time.perf_counter()
        with autocast(self.device, self.amp):
            z = pipe.student(inputs)
            with torch.no_grad():
                t = pipe.teacher(inputs)
        z, t = z.float(), t.float()  # the method and the losses run in float32
        z_all = ctx.gather_with_grad(z)
        t_all = ctx.gather(t)
        idx_all = ctx.gather(positions)
        if timings is not None:
            self._sync()
            t1 = time.perf_counter()
        terms = self.method(BatchView(z, z_all, t_all, idx_all, row_start=ctx.rank * z.shape[0],
                                      world_size=ctx.world_size))
        if timings is not None:
            self._sync()
            t2 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(terms["loss"]).backward()
        else:
            terms["loss"].backward()
        ctx.all_reduce_grads(self.params)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        pipe.teacher.update(pipe.student)
        self.global_step += 1
        names = list(terms)
        values = ctx.all_reduce_sum(torch.stack([terms[k].detach().float() for k in names]))
        out = dict(zip(names, values.tolist(), strict=True))
        if timings is not None:
            t3 = time.perf_counter()
            for key, dt in (("forward", t1 - t0), ("method", t2 - t1), ("backward_step", t3 - t2)):
                timings[key] = timings.get(key, 0.0) + dt
        return out

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start_epoch_state(self, epoch: int) -> None:
        """Seed, k-NN table, sampler epoch and method refresh for ``epoch`` (0-based)."""
        cfg, ctx = self.config, self.ctx
        s = epoch_seed(cfg.seed, epoch, ctx.rank)
        seed_everything(s)
        emb = self._train_emb if self._train_emb is not None else self.pipeline.train_embeddings("teacher")
        self._train_emb = None
        self.sampler.set_neighbors(self.knn_table(emb))
        self.sampler.set_epoch(epoch)
        if ctx.is_main:  # e.g. k-means pseudo-labels: computed once, then sent to every rank
            self.method.on_epoch_start(emb, epoch)
        ctx.broadcast_module(self.method)
        self.pipeline.set_train()

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch; returns its metrics row (without validation)."""
        from plm.utils.progress import progress as progress_bar

        cfg = self.config
        self.start_epoch_state(epoch)
        start = time.perf_counter()
        sums: dict[str, float] = {}
        steps = 0
        bar = progress_bar(total=len(self.sampler), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                   disable=not (self.progress and self.ctx.is_main), leave=False)
        for inputs, positions in self.pipeline.batches(self.sampler):
            try:
                terms = self.step(inputs, positions)
            except FloatingPointError as err:  # a non-finite value caught inside the method
                raise TrainingDivergedError(f"training diverged at epoch {epoch + 1} step {steps + 1} ({err}); "
                                            f"lower the learning rates (optim.lr_*) or set optim.grad_clip") from None
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
            if not math.isfinite(terms["loss"]):
                raise TrainingDivergedError(f"training diverged (non-finite loss {terms['loss']}) at epoch {epoch + 1} "
                                            f"step {steps}; lower the learning rates (optim.lr_*) "
                                            "or set optim.grad_clip")
            elapsed = time.perf_counter() - start  # the epoch's mean loss so far: the summary line's loss at the end
            bar.set_postfix(**{"mean loss": f"{sums['loss'] / steps:.4f}",
                               "images/s": f"{steps * cfg.sampler.batch_size / elapsed:.0f}"})
            bar.update(1)
        bar.close()
        elapsed = time.perf_counter() - start
        row: dict[str, Any] = {"epoch": epoch + 1, "step": self.global_step}
        row["loss"] = sums.pop("loss") / max(steps, 1)
        row.update({f"loss_{k}": v / max(steps, 1) for k, v in sums.items()})
        for group in self.optimizer.param_groups:
            row.setdefault(f"lr_{group['name']}", group["lr"])
        row["time_s"] = round(elapsed, 3)
        row["images_per_s"] = round(steps * cfg.sampler.batch_size / max(elapsed, 1e-9), 1)
        return row

    # ------------------------------------------------------------------------------ evaluation
    def _metrics(self, split, ks: list[int], with_nmi: bool, baseline: bool = False) -> Optional[dict[str, Any]]:
        from plm.evaluation import retrieval_metrics

        res = self.pipeline.baseline_split(split) if baseline else self.pipeline.embed_split(split, "student")
        if res is None:
            return None
        vec, labels = res
        m = retrieval_metrics(vec, labels, ks=ks, with_nmi=with_nmi)
        return {"dataset": self.config.dataset, "split": split.split, "skipped": len(split) - len(labels), **m}

    def _val_ap(self, which: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """Per-query validation AP@R of ``which`` (``student``, ``teacher`` or ``pretrained``) and
        the queries' labels, on rank 0 (``None`` on the others); every rank must call it
        (finetune mode embeds in shards)."""
        from plm.evaluation.metrics import query_ranks

        assert self.splits.val is not None
        split = self.splits.val
        res = self.pipeline.baseline_split(split) if which == "pretrained" else self.pipeline.embed_split(split, which)
        if res is None:
            return None
        # the row scan: on validation splits with few large classes it is several times faster
        # than the symmetric scan (3,000 Fashion-MNIST images, 2 classes: 1.3 s vs 5.1 s)
        return query_ranks(res[0], res[1], symmetric=False).ap_at_r, np.asarray(res[1])

    def _pretrained_ap(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
        if not self._pretrained_scored:
            self._ap_pretrained = self._val_ap("pretrained")
            self._pretrained_scored = True
        return self._ap_pretrained

    def validate(self) -> Optional[Judgement]:
        """The evaluated network (``eval.model``) on the validation split, judged against the
        pretrained features (:func:`plm.training.selection.judge`), on every rank."""
        if self.splits.val is None:
            return None
        pre = self._pretrained_ap()
        cur = self._val_ap(self.config.eval.model)
        if cur is None or pre is None:
            return self._broadcast_judgement(None)
        if not np.array_equal(cur[1], pre[1]):
            raise RuntimeError("the validation queries differ between the model and the pretrained features")
        e = self.config.eval
        return self._broadcast_judgement(judge(cur[0], pre[0], cur[1], e.min_gain, e.confidence))

    def pretrained_value(self) -> float:
        """Validation MAP@R of the pretrained features, on every rank."""
        pre = self._pretrained_ap()
        return self._broadcast_judgement(judge(pre[0], pre[0], None, 0.0, 0.0) if pre is not None else None).value

    @property
    def signals_on(self) -> bool:
        """Whether the label-free scores are recorded (``eval.signals``; by default only without validation)."""
        flag = self.config.eval.signals
        return self.splits.val is None if flag is None else bool(flag)

    def label_free(self, net: str) -> dict[str, float]:
        """The label-free scores (:mod:`plm.evaluation.label_free`) of ``net`` (``student``, ``teacher``
        or ``pretrained``) on a seeded subset of training images; empty where the pipeline has none."""
        from plm.evaluation.label_free import effective_rank, knn_agreement

        pairs = self.pipeline.signal_pairs(net)
        if pairs is None:
            return {}
        clean, views = pairs
        return {"lf_agreement": knn_agreement(clean, views), "lf_rank": effective_rank(clean)}

    def _broadcast_judgement(self, j: Optional[Judgement]) -> Judgement:
        value = torch.zeros(5, dtype=torch.float64, device=self.device)
        if j is not None:
            value[:] = torch.tensor([j.value, j.gain, j.se, j.margin, float(j.qualified)], dtype=torch.float64)
        v = self.ctx.broadcast(value).tolist()
        return Judgement(v[0], v[1], v[2], v[3], bool(v[4]))

    def _improved(self, score: float) -> bool:
        prev = self.best.get("value")
        if prev is None:
            return True
        return score < prev if self.selection == "train_pair_loss" else score > prev

    # ------------------------------------------------------------------------------ checkpoints
    def _pretrained_payload(self, epoch: int) -> dict[str, Any]:
        """``best.pt`` when the pretrained features are the selected model: their model, with the
        resume state of ``epoch`` (so the file stays a complete training checkpoint)."""
        return {**self._payload(epoch), "model_config": self.pipeline.pretrained_model_config().to_dict(),
                "model_state": self.pipeline.pretrained_state(), "epoch": PRETRAINED}

    def _payload(self, epoch: int) -> dict[str, Any]:
        pipe = self.pipeline
        cpu = lambda sd: {k: v.detach().cpu().clone() for k, v in sd.items()}  # noqa: E731
        return {
            "model_config": model_config_of(self.config).to_dict(),
            "model_state": pipe.export_state(self.config.eval.model),
            "student_state": cpu(pipe.student.state_dict()),
            "teacher_state": cpu(pipe.teacher.module.state_dict()),
            "method_state": cpu(self.method.state_dict()),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "epoch": epoch,
            "global_step": self.global_step,
            "rng": rng_state(),
            "sampler_state": self.sampler.state_dict(),
            "config": self.config.to_dict(),
            "history": list(self.history),
            "best": dict(self.best),
            "selection": self.selection,
            "method": self.config.method,
        }

    # ------------------------------------------------------------------------------ run
    def run(self, stop_after: Optional[int] = None) -> Optional[TrainResult]:
        """Train the remaining epochs, then evaluate the best checkpoint on the test split.

        Args:
            stop_after: leave after this epoch (1-based) as if interrupted, returning ``None``;
                a later run with ``resume=True`` continues from ``last.pt``.
        """
        cfg, ctx = self.config, self.ctx
        tb = TensorBoardLogger(self.out / "tensorboard", cfg.log.tensorboard) if ctx.is_main else None
        if ctx.is_main and self.history and self.start_epoch > 0:  # a kill may have come before metrics.csv
            write_csv(self.history, self.out / "metrics.csv")
        try:
            if self.start_epoch == 0 and not self.history and self.splits.val is None and self.signals_on:
                # without validation, the untrained model is a candidate of a label-free criterion
                row0 = {"epoch": 0, "step": 0, **self.label_free(cfg.eval.model)}
                row0.update({f"{k}_pretrained": v for k, v in self.label_free("pretrained").items()})
                self.history.append(row0)
                score0 = label_free_score(row0, self.selection)
                self.best = {"epoch": 0, "value": score0}
                if ctx.is_main:
                    commit_checkpoints(self._payload(0), self.last_path, self.best_path, score0 is not None)
                    write_csv(self.history, self.out / "metrics.csv")
                ctx.barrier()
            if self.start_epoch == 0 and not self.history and self.splits.val is not None:
                # the pretrained features and the untrained model are the first candidates: a trained
                # epoch is kept only when it beats the pretrained features by more than the margin
                pre = self.pretrained_value()
                j0 = self.validate()
                assert j0 is not None
                row0 = {"epoch": 0, "step": 0, **_val_columns(j0), "val_pretrained": pre}
                if self.signals_on:
                    row0.update(self.label_free(cfg.eval.model))
                    row0.update({f"{k}_pretrained": v for k, v in self.label_free("pretrained").items()})
                self.history.append(row0)
                self.best = ({"epoch": 0, "value": j0.value, "margin": j0.margin} if j0.qualified
                             else {"epoch": PRETRAINED, "value": pre, "margin": None})
                self.best["pretrained"] = pre
                if ctx.is_main:
                    commit_checkpoints(self._payload(0), self.last_path, self.best_path, True,
                                       self._pretrained_payload(0) if self.best["epoch"] == PRETRAINED else None)
                    write_csv(self.history, self.out / "metrics.csv")
                    log.info("epoch 0 (untrained): val MAP@R %.4f (pretrained features %.4f)", j0.value, pre)
                ctx.barrier()
            for epoch in range(self.start_epoch, cfg.epochs):
                row = self.run_epoch(epoch)
                last = epoch + 1 == cfg.epochs
                validated = (epoch + 1) % cfg.eval.every == 0 or last
                judgement = self.validate() if validated else None
                if validated and self.signals_on:
                    row.update(self.label_free(cfg.eval.model))
                if self.selection == "val_map_at_r":
                    row.update(_val_columns(judgement))
                    improved = judgement is not None and judgement.qualified and (
                        self.best["epoch"] == PRETRAINED or judgement.value > self.best["value"])
                    if improved:
                        assert judgement is not None
                        self.best.update({"epoch": epoch + 1, "value": judgement.value, "margin": judgement.margin})
                else:
                    row["val_map_at_r"] = None
                    score = label_free_score(row, self.selection)
                    improved = score is not None and self._improved(score)
                    if improved:
                        self.best = {"epoch": epoch + 1, "value": score}
                self.history.append(row)
                if ctx.is_main:
                    commit_checkpoints(self._payload(epoch + 1), self.last_path, self.best_path, improved)
                    write_csv(self.history, self.out / "metrics.csv")
                    if tb is not None:  # rank 0's logger
                        tb.log(row, self.global_step)
                    log.info(_epoch_line(row, cfg.epochs, improved))
                ctx.barrier()
                if stop_after is not None and epoch + 1 >= stop_after and not last:
                    return None
        finally:
            if tb is not None:
                tb.close()
        return self._finish()

    def _finish(self) -> TrainResult:
        from plm.utils.io import safe_torch_load

        cfg, ctx = self.config, self.ctx
        ctx.barrier()
        best = safe_torch_load(self.best_path)
        if best.get("epoch") is None or int(best["epoch"]) != int(self.best["epoch"]):
            raise ValueError(f"{self.best_path} holds epoch {best.get('epoch')} but {self.last_path.name} committed "
                             f"epoch {self.best['epoch']} as the best; the run folder was changed by hand")
        kept_pretrained = self.best["epoch"] == PRETRAINED
        if not kept_pretrained:
            self.pipeline.load_export_state(best["model_state"])
        test = baseline = None
        if self.splits.test is not None:
            ks = cfg.eval.recall_at or default_ks(cfg.dataset)
            if cfg.eval.baseline or kept_pretrained:
                baseline = self._metrics(self.splits.test, ks, cfg.eval.nmi, baseline=True)
            test = baseline if kept_pretrained else self._metrics(self.splits.test, ks, cfg.eval.nmi)
            if not cfg.eval.baseline:
                baseline = None
        helped = self._helped()
        line = verdict(self.selection, int(self.best["epoch"]), self.best["value"], self.best.get("pretrained"),
                       self.best.get("margin"))
        if ctx.is_main:
            if helped is False:  # said once, as a warning (plm train prints the other verdicts with its table)
                log.warning("%s", line)
            if test is not None:
                atomic_write_json(test, self.out / "metrics.json")
                log.info("test (%s): R@1 %.4f  MAP@R %.4f",
                         "pretrained features" if kept_pretrained else f"best epoch {self.best['epoch']}",
                         test["recall_at"][str(ks[0])], test["map_at_r"])
            atomic_write_json(self._summary(test, baseline), self.out / "summary.json")
        if kept_pretrained:
            from plm.models import load_model

            model = load_model(self.best_path)
        else:
            model = self.pipeline.model.cpu().eval()
        return TrainResult(cfg, self.out, list(self.history), self.selection, int(self.best["epoch"]), helped, line,
                           self.best_path, self.last_path, test, baseline, model)

    def _helped(self) -> Optional[bool]:
        """Whether a trained epoch beat the pretrained features on validation (``None``: no validation)."""
        if self.selection != "val_map_at_r":
            return None
        return int(self.best["epoch"]) != PRETRAINED

    def _summary(self, test: Optional[dict], baseline: Optional[dict]) -> dict[str, Any]:
        cfg, s = self.config, self.splits
        return {
            "dataset": cfg.dataset, "method": cfg.method, "mode": cfg.mode, "epochs": cfg.epochs, "seed": cfg.seed,
            "selection": self.selection, "best_epoch": self.best["epoch"], "best_value": self.best["value"],
            "training_helped": self._helped(),
            "verdict": verdict(self.selection, int(self.best["epoch"]), self.best["value"],
                               self.best.get("pretrained"), self.best.get("margin")),
            "val_pretrained": self.best.get("pretrained"), "val_margin": self.best.get("margin"),
            "val_classes": s.val_classes, "train_images": self.pipeline.num_train,
            "val_images": len(s.val) if s.val is not None else 0,
            "test_images": len(s.test) if s.test is not None else 0,
            "world_size": self.ctx.world_size,
            "train_time_s": round(sum(r.get("time_s") or 0.0 for r in self.history), 2),
            "test": test, "pretrained_test": baseline,
        }


def _available_memory(device: torch.device) -> Optional[int]:
    """Bytes of memory free for tensors on ``device`` (``None`` when unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


#: bytes per pair of batch items the methods hold at once (a few B × B float32 matrices and their gradients)
PAIR_BYTES = 64


def check_batch_size(config: TrainConfig, num_train: int, device: torch.device) -> None:
    """Refuse a batch that the training set cannot fill or that cannot fit in memory.

    Raises:
        UserError: ``sampler.batch_size`` above the number of training images, or above what the
            available memory allows for the batch's pairwise matrices.
    """
    b, k = config.sampler.batch_size, config.sampler.k
    if b > num_train:
        raise UserError(f"sampler.batch_size must be at most the {num_train} training images (and a multiple of "
                        f"sampler.k={k}); got {b}")
    free = _available_memory(device)
    if free is not None:
        limit = int(math.isqrt(max(free // PAIR_BYTES, 1)))
        if b > limit:
            raise UserError(f"sampler.batch_size={b} needs about {PAIR_BYTES * b * b / 2**30:.1f} GiB for its pairwise "
                            f"matrices, more than the {free / 2**30:.1f} GiB free on {device.type}; use at most "
                            f"{limit - limit % k}")


def pair_loss(row: dict[str, Any]) -> float:
    """The selection score without a validation split: the epoch's mean pair term.

    PLM's total also holds L_proxy and L_neighbourhood, whose scale says nothing about the
    embedding (L_neighbourhood grows as the proxies spread); the pair term (``loss_point``) is
    what every method trains the embedding with. The peers' totals are their pair term.
    """
    return float(row["loss_point"] if row.get("loss_point") is not None else row["loss"])


def label_free_score(row: dict[str, Any], criterion: str) -> Optional[float]:
    """The selection score of an epoch's row without validation (``eval.label_free``); ``None``
    when the row has none (an epoch that was not evaluated)."""
    if criterion == "train_pair_loss":
        return pair_loss(row) if row.get("loss") is not None else None
    if criterion == "last_epoch":
        return float(row["epoch"])
    value = row.get(criterion)
    return None if value is None else float(value)


def _val_columns(j: Optional[Judgement]) -> dict[str, Any]:
    """The validation columns of a ``metrics.csv`` row (empty values for an epoch not validated)."""
    if j is None:
        return {"val_map_at_r": None, "val_gain": None, "val_margin": None}
    return {"val_map_at_r": j.value, "val_gain": j.gain, "val_margin": j.margin}


def _epoch_line(row: dict[str, Any], epochs: int, improved: bool) -> str:
    terms = "  ".join(f"{k[5:]} {v:.4f}" for k, v in row.items() if k.startswith("loss_"))
    val = f"  val MAP@R {row['val_map_at_r']:.4f}" if row.get("val_map_at_r") is not None else ""
    return (f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f} ({terms}){val}  {row['time_s']:.1f} s"
            f"{'  *best' if improved else ''}")


def train(config: TrainConfig | dict, out_dir: str | Path, progress: bool = True, resume: bool = False,
          ctx: Optional[DistContext] = None, force: bool = False) -> TrainResult:
    """Train an embedding model and evaluate its best checkpoint on the test split.

    Args:
        config: a :class:`TrainConfig` or a nested dict (validated with :meth:`TrainConfig.from_dict`).
        out_dir: output folder: ``config.yaml``, ``last.pt``, ``best.pt``, ``metrics.csv``,
            ``metrics.json`` (labelled test split only) and ``summary.json``.
        progress: show progress bars.
        resume: continue from ``out_dir/last.pt`` if present (the config must match).
        ctx: distributed context (default: from torchrun's environment, else single process).
        force: replace files of the run folder's names that plm did not write.

    Returns:
        A :class:`TrainResult`.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    result = Trainer(config, out_dir, progress=progress, resume=resume, ctx=ctx, force=force).run()
    assert result is not None  # run() returns None only when given stop_after
    return result
