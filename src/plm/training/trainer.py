"""The training loop: a thin layer over the pipeline, sampler, method, EMA teacher and optimiser.

:meth:`Trainer._setup` reads a run's order top to bottom (run folder and resume, splits and sizes,
networks, the first data pass, method/sampler/optimiser). Per epoch: re-seed (from seed, epoch,
rank), the teacher's embeddings of the training set, the k-NN table, the method's refresh, the
steps; then the selection (:class:`~plm.training.selection.RunSelection`: validation against the
pretrained features, the best epoch, the final test and ``summary.json``) and ``last.pt`` /
``best.pt`` / ``metrics.csv``. Resuming restores every state from ``last.pt``; every epoch's
randomness is a function of (seed, epoch, rank), so an interrupted and resumed run ends with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, Optional

import torch

from plm.errors import TrainingDivergedError
from plm.models import load_model
from plm.training.checkpoint import (
    RUN_FILES,
    checkpoint_paths,
    commit_checkpoints,
    epoch_seed,
    load_checkpoint,
    recover_checkpoints,
    resume_differences,
    rng_state,
    seed_everything,
    set_rng_state,
)
from plm.training.config import TrainConfig
from plm.training.distributed import DistContext, init_distributed, resolve_device
from plm.training.history import EpochMeter, TensorBoardLogger, epoch_line, write_csv
from plm.training.methods import BatchView, build_method
from plm.training.optim import LossScaling, build_optimizer, build_scheduler
from plm.training.pipeline import build_pipeline, model_config_of
from plm.training.result import TrainResult
from plm.training.sampler import NeighborhoodSampler, knn_table
from plm.training.selection import PRETRAINED, RunSelection
from plm.training.sizing import check_batch_size, fit_to_data
from plm.training.splits import load_splits
from plm.utils.device import autocast
from plm.utils.io import atomic_write_bytes, safe_torch_load
from plm.utils.paths import check_run_folder
from plm.utils.threads import OtherLoad, limited_threads

log = logging.getLogger(__name__)



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
        from plm.utils.device import amp_dtype

        self.config, self.out, self.force = config, Path(out_dir), force
        self.ctx = ctx if ctx is not None else init_distributed(
            "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu")
        self.device = resolve_device(config.device, self.ctx)
        self.amp = amp_dtype(config.amp, self.device)
        self.scaling = LossScaling(self.device, self.amp)
        self.progress = progress and config.log.progress
        self.last_path, self.best_path = checkpoint_paths(self.out)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = self.global_step = 0
        self._contention_noted = False
        with self._thread_limit():
            self._setup(resume)

    def _thread_limit(self) -> contextlib.AbstractContextManager:
        """At most ``config.threads`` intra-op threads (restored afterwards), or torch's as they are."""
        return limited_threads(self.config.threads) if self.config.threads else contextlib.nullcontext()

    def _note_contention(self, epoch: int, load: OtherLoad) -> None:
        """Say once per run when other processes held cores during an epoch trained on more threads
        than the free cores (each step then waits for the thread that shares a core)."""
        if self._contention_noted:
            return
        others, threads, cores = load.cores(), torch.get_num_threads(), len(load.cpus)
        if others is None or not self.ctx.is_main or self.device.type != "cpu" or not cores:
            return
        free = max(1, cores - math.floor(others + 0.5))
        if others < 0.5 or free >= threads:
            return
        self._contention_noted = True
        log.info("note: other processes kept %.1f of this process's %d cores busy during epoch %d; with %d threads "
                 "every step waits for the one that shares a core. threads=%d trains faster while that lasts (results "
                 "differ by rounding from a run with another thread count)", others, cores, epoch, threads, free)

    def _setup(self, resume: bool) -> None:
        """The order of a run, top to bottom: the run folder and the checkpoint to resume; the splits
        and the sizes they support; the networks (resumed weights first); the first data pass; the
        method, sampler and optimiser sized on what that pass kept; the resumed or initial state."""
        ctx = self.ctx
        if ctx.is_main:  # before any long work: a folder that cannot be written fails now
            check_run_folder(self.out, RUN_FILES, "--out", force=self.force)
            for action in recover_checkpoints(self.out):
                log.info("%s: %s (left by an interrupted run)", self.out, action)
        ctx.barrier()
        ckpt = None
        if self.last_path.is_file():
            if not resume:
                raise ValueError(f"{self.out} already holds a run ({self.last_path.name}); pass --resume to continue "
                                 f"it or choose another --out")
            ckpt = load_checkpoint(self.last_path)
        elif resume and ctx.is_main:
            log.info("no checkpoint in %s: starting from scratch", self.out)
        seed_everything(self.config.seed)
        self.splits = load_splits(self.config)
        # sizes the data cannot support (proxies, clusters, batch) are capped before any feature extraction
        cfg, notices = fit_to_data(self.config, len(self.splits.train), ctx.world_size, self.device.type)
        self.config = cfg
        for line in notices if ctx.is_main else []:
            log.info("note: %s", line)
        if ckpt is not None and (diff := resume_differences(ckpt["config"], cfg.to_dict())):
            raise ValueError(f"cannot resume {self.last_path}: the config differs in {', '.join(diff)} "
                             f"(a resumed run must use the same settings; see {self.out / 'config.yaml'})")
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cfg.to_yaml().encode(), self.out / "config.yaml")
        check_batch_size(cfg, len(self.splits.train), self.device)
        self.pipeline = build_pipeline(cfg, self.splits, self.device, ctx, self.progress, fresh=ckpt is None)
        if ckpt is not None:  # networks first: the first pass then serves the resumed epoch
            self.pipeline.student.load_state_dict(ckpt["student_state"])
            self.pipeline.teacher.module.load_state_dict(ckpt["teacher_state"])
        first = self.pipeline.first_pass()
        self.method = build_method(cfg, self.pipeline.model.out_dim).to(self.device)
        self.sampler = NeighborhoodSampler(self.pipeline.num_train, cfg.sampler.batch_size, cfg.sampler.k, cfg.seed,
                                            ctx.rank, ctx.world_size, cfg.sampler.batches_per_epoch)
        groups = self.pipeline.param_groups()
        if method_params := [p for p in self.method.parameters() if p.requires_grad]:
            groups.append({"name": "proxies", "params": method_params, "lr": cfg.optim.lr_proxies, "weight_decay": 0.0})
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = build_optimizer(groups)
        steps = len(self.sampler)
        self.scheduler = build_scheduler(self.optimizer, cfg.epochs * steps,
                                         int(round(cfg.optim.warmup_epochs * steps)), cfg.optim.schedule)
        self.selection = RunSelection(cfg, self.splits, self.pipeline, ctx, self.device)
        if ckpt is not None:
            self._restore(ckpt)
        else:
            self.method.prepare(first)
            ctx.broadcast_module(self.method)
        self._first_pass: Optional[torch.Tensor] = first  # the next epoch's k-NN table comes from it

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.method.load_state_dict(ckpt["method_state"])
        self.method.to(self.device)
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        self.scheduler.load_state_dict(ckpt["scheduler_state"])
        self.sampler.load_state_dict(ckpt["sampler_state"])
        set_rng_state(ckpt["rng"])
        self.start_epoch, self.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        self.history = list(ckpt["history"])
        self.selection.best = dict(ckpt["best"])
        if self.ctx.is_main:
            log.info("resumed %s at epoch %d/%d", self.last_path, self.start_epoch, self.config.epochs)

    # ------------------------------------------------------------------------------ epochs and steps
    def step(self, inputs: torch.Tensor, positions: torch.Tensor) -> dict[str, float]:
        """One optimisation step on this rank's share of a batch; returns the global loss terms."""
        pipe = self.pipeline
        with autocast(self.device, self.amp):
            z = pipe.student(inputs)
            with torch.no_grad():
                if pipe.global_teacher_pass:
                    t_all = pipe.teacher(self.ctx.gather(inputs))
                else:
                    t_all = self.ctx.gather(pipe.teacher(inputs))
        # the method and the losses run in float32, on the global batch
        terms = self.method(BatchView.gathered(z.float(), t_all.float(), positions, self.ctx))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaling.backward(terms["loss"])
        self.ctx.all_reduce_grads(self.params)
        self.scaling.unscale_(self.optimizer)
        if self.config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.grad_clip)
        self.scaling.step(self.optimizer)
        self.scheduler.step()
        pipe.teacher.update(pipe.student)
        self.global_step += 1
        values = self.ctx.all_reduce_sum(torch.stack([v.detach().float() for v in terms.values()]))
        return dict(zip(terms, values.tolist(), strict=True))

    def start_epoch_state(self, epoch: int) -> None:
        """Seed, k-NN table, sampler epoch and method refresh for ``epoch`` (0-based)."""
        seed_everything(epoch_seed(self.config.seed, epoch, self.ctx.rank))
        emb = self._first_pass if self._first_pass is not None else self.pipeline.train_embeddings("teacher")
        self._first_pass = None
        self.sampler.set_neighbors(knn_table(emb, self.config.sampler.k, self.ctx, self.device))
        self.sampler.set_epoch(epoch)
        if self.ctx.is_main:  # e.g. k-means pseudo-labels: computed once, then sent to every rank
            self.method.on_epoch_start(emb, epoch)
        self.ctx.broadcast_module(self.method)
        self.pipeline.set_train()

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch; returns its metrics row (without validation)."""
        self.start_epoch_state(epoch)
        meter = EpochMeter(epoch, self.config.epochs, len(self.sampler), self.config.sampler.batch_size,
                           self.progress and self.ctx.is_main)
        for inputs, positions in self.pipeline.batches(self.sampler):
            try:
                terms = self.step(inputs, positions)
            except FloatingPointError as err:  # a non-finite value caught inside the method
                raise TrainingDivergedError(f"training diverged at epoch {epoch + 1} step {meter.steps + 1} ({err}); "
                                            f"lower the learning rates (optim.lr_*) or set optim.grad_clip") from None
            meter.add(terms)  # raises TrainingDivergedError on a non-finite loss
        return meter.row(self.global_step, self.optimizer.param_groups)

    # ------------------------------------------------------------------------------ checkpoints
    def _payload(self, epoch: int, pretrained: bool = False) -> dict[str, Any]:
        """The checkpoint of ``epoch``: the evaluated model and everything a resumed run needs. With
        ``pretrained`` (``best.pt`` when the pretrained features are the selected model) the model is
        theirs, with the same resume state, so the file stays a complete training checkpoint."""
        pipe = self.pipeline
        cpu = lambda sd: {k: v.detach().cpu().clone() for k, v in sd.items()}  # noqa: E731
        return {
            "model_config": (pipe.pretrained_model_config() if pretrained else model_config_of(self.config)).to_dict(),
            "model_state": pipe.pretrained_state() if pretrained else pipe.export_state(self.config.eval.model),
            "student_state": cpu(pipe.student.state_dict()), "teacher_state": cpu(pipe.teacher.module.state_dict()),
            "method_state": cpu(self.method.state_dict()), "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(), "epoch": PRETRAINED if pretrained else epoch,
            "global_step": self.global_step, "rng": rng_state(), "sampler_state": self.sampler.state_dict(),
            "config": self.config.to_dict(), "history": list(self.history), "best": dict(self.selection.best),
            "selection": self.selection.criterion, "method": self.config.method,
        }

    def _commit(self, epoch: int, improved: bool, pretrained_best: bool = False,
                tb: Optional[TensorBoardLogger] = None, line: Optional[str] = None) -> None:
        """Write ``last.pt`` (and ``best.pt`` when ``improved``) and ``metrics.csv`` on rank 0; every rank waits."""
        if self.ctx.is_main:
            commit_checkpoints(self._payload(epoch), self.last_path, self.best_path, improved,
                               self._payload(epoch, pretrained=True) if pretrained_best else None)
            write_csv(self.history, self.out / "metrics.csv")
            if tb is not None:
                tb.log(self.history[-1], self.global_step)
            if line:
                log.info(line)
        self.ctx.barrier()

    # ------------------------------------------------------------------------------ run
    def run(self, stop_after: Optional[int] = None) -> Optional[TrainResult]:
        """Train the remaining epochs, then evaluate the best checkpoint on the test split.

        Args:
            stop_after: leave after this epoch (1-based) as if interrupted, returning ``None``;
                a later run with ``resume=True`` continues from ``last.pt``.
        """
        with self._thread_limit():
            return self._run(stop_after)

    def _run(self, stop_after: Optional[int]) -> Optional[TrainResult]:
        cfg, ctx = self.config, self.ctx
        tb = TensorBoardLogger(self.out / "tensorboard", cfg.log.tensorboard) if ctx.is_main else None
        load = OtherLoad()
        if ctx.is_main and self.history and self.start_epoch > 0:  # a kill may have come before metrics.csv
            write_csv(self.history, self.out / "metrics.csv")
        try:
            zero = self.selection.epoch_zero() if self.start_epoch == 0 and not self.history else None
            if zero is not None:  # the first candidates: the pretrained features and the untrained model
                self.history.append(zero.row)
                self._commit(0, zero.commit_best, zero.pretrained_best, line=zero.message)
            for epoch in range(self.start_epoch, cfg.epochs):
                load.reset()
                row = self.run_epoch(epoch)
                self._note_contention(epoch + 1, load)
                last = epoch + 1 == cfg.epochs
                improved = self.selection.consider(epoch + 1, row, (epoch + 1) % cfg.eval.every == 0 or last)
                self.history.append(row)
                self._commit(epoch + 1, improved, tb=tb, line=epoch_line(row, cfg.epochs, improved))
                if stop_after is not None and epoch + 1 >= stop_after and not last:
                    return None
        finally:
            if tb is not None:
                tb.close()
        return self._finish()

    def _finish(self) -> TrainResult:
        sel, ctx = self.selection, self.ctx
        ctx.barrier()
        best = safe_torch_load(self.best_path)
        if best.get("epoch") is None or int(best["epoch"]) != int(sel.best["epoch"]):
            raise ValueError(f"{self.best_path} holds epoch {best.get('epoch')} but {self.last_path.name} committed "
                             f"epoch {sel.best['epoch']} as the best; the run folder was changed by hand")
        if not sel.kept_pretrained:
            self.pipeline.load_export_state(best["model_state"])
        test, baseline = sel.final_test()
        if ctx.is_main:
            sel.write_report(self.out, test, baseline, self.history, log)
        model = load_model(self.best_path) if sel.kept_pretrained else self.pipeline.model.cpu().eval()
        return TrainResult(self.config, self.out, list(self.history), sel.criterion, int(sel.best["epoch"]),
                           sel.helped(), sel.verdict(), self.best_path, self.last_path, test, baseline, model)


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
