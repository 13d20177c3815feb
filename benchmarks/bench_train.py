"""Training steps: a frozen-mode PLM step against an STML step, part by part; epochs with a core busy.

Cases (``--case``):

- ``profile`` (the default): PLM and STML trainers with the same head, batch and data (frozen
  mode, cached EfficientNet-Lite0 features; glyphs by default, with its preset: seed-group
  candidates, B = 120 = 24 seeds × k = 5, a 1,280-d head) run the same batches, in alternating
  blocks so that both see the same machine. Each step is split into parts by wrapping the
  trainer's pieces from the outside (nothing in the trainer changes): student forward, teacher
  pass, PL pieces, similarities (the rest of the target), point loss, proxies and neighbourhood
  term (the rest of the method), backward, optimiser, EMA and the rest of the step (zero_grad,
  scheduler, loss bookkeeping). Once per epoch: the teacher's pass over the training set, the
  k-NN table and the validation. The table gives milliseconds per step and the PLM / STML ratio
  of every part (the issue's target: a PLM step at most 1.25 times an STML step). The method
  ``plm/tensor`` is PLM with the PL model's tensor code instead of its compiled CPU kernels
  (``PLM_KERNELS=0``), for the two side by side.
- ``epoch``: whole training epochs of each method (teacher pass, k-NN table, every step) with
  each ``--threads`` count, on idle cores and with one core held by a spinning process that the
  benchmark starts and stops itself: the measurement a thread policy is chosen from.
- ``throughput``: steps per second of 1 process vs 2 processes (gloo, 1 thread each), frozen and
  finetune modes, on digits images (``--modes``, ``--worlds``, ``--threads``).
- ``memory``: peak memory and step time of finetune-mode training (digits at 224 px, B = 120)
  with the backbone's activations kept (``recompute=off``) and recomputed (``on``), and torch's
  large tensors in 4 KB pages or in transparent huge pages, each in a fresh process.
- ``floor``: the work a PLM step has beyond an STML step that no fusing of operations removes
  (the proxy terms' dense products, the batch's float64 QR or Gram matrix, the PL model's
  compiled kernels on a real batch, AdamW on the proxies), each part alone, on 1 and 2 threads,
  against a quarter of an STML step measured in the same run: the room a PLM step of at most
  1.25 STML steps leaves for all of it and every elementwise operation and autograd besides.

``--busy yes`` runs the profile with one core held by a spinning process; ``--busy both``
measures idle and busy and gives the busy / idle ratios.

    python -m benchmarks.bench_train                          # the profile, glyphs, 60 steps per method
    python -m benchmarks.bench_train --busy both --steps 40   # the same, idle and with one core busy
    python -m benchmarks.bench_train --methods plm stml plm/tensor   # and PLM without the compiled kernels
    python -m benchmarks.bench_train --case epoch --threads 2 1
    python -m benchmarks.bench_train --case throughput --modes frozen finetune --worlds 1 2
    python -m benchmarks.bench_train --case floor
    python -m benchmarks.bench_train --case memory
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, Optional

import torch
import torch.multiprocessing as mp

from benchmarks._load import busy_core

#: the parts of a step, in the order of the table (``other`` is the step less every other part)
STEP_PARTS = ("student forward", "teacher pass", "PL pieces", "similarities (STML: its target)", "point loss",
              "proxies + neighbourhood", "backward", "optimiser", "EMA", "other")
#: the parts paid once per epoch
EPOCH_PARTS = ("teacher embeddings (training set)", "k-NN table", "validation")


# ------------------------------------------------------------------------------ the step profile

class PartClock:
    """Seconds spent in wrapped callables, accumulated per part name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn: Callable) -> Callable:
        """``fn``, timed into ``name``."""
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return timed


def profile_config(dataset: str, method: str, embed_dim: int):
    """The frozen-mode training config of the profile (the dataset's preset, B = 120, k = 5)."""
    from plm.training import default_config

    return default_config(dataset, method=method, mode="frozen", epochs=1, model={"embed_dim": embed_dim},
                          sampler={"batch_size": 120, "k": 5}, eval={"nmi": False, "baseline": False},
                          log={"progress": False, "tensorboard": False})


def _instrument(trainer, clock: PartClock) -> None:
    """Wrap the trainer's parts (attributes of this trainer's objects only)."""
    pipe, method = trainer.pipeline, trainer.method
    pipe.student.forward = clock.wrap("student forward", pipe.student.forward)
    pipe.teacher.forward = clock.wrap("teacher pass", pipe.teacher.forward)
    pipe.teacher.update = clock.wrap("EMA", pipe.teacher.update)
    trainer.optimizer.step = clock.wrap("optimiser", trainer.optimizer.step)
    method.forward = clock.wrap("method", method.forward)
    target_owner = getattr(method, "loss", method)  # PLMMethod delegates to its PLMLoss
    target_owner.target_similarity = clock.wrap("target", target_owner.target_similarity)
    trainer.step = clock.wrap("step", trainer.step)


_ACTIVE: list[PartClock] = []  # the clock of the trainer that is stepping


@contextlib.contextmanager
def _shared_parts() -> Iterator[None]:
    """Time the module functions both trainers share (and ``Tensor.backward``) into the active clock."""
    import plm.losses.plm_loss as plm_loss_module
    import plm.manifold.similarity as similarity_module
    import plm.training.methods.stml as stml_module

    patches = [(similarity_module, "fit_pieces", "PL pieces"),
               (plm_loss_module, "relaxed_contrastive_loss", "point loss"),
               (stml_module, "relaxed_contrastive_loss", "point loss"),
               (torch.Tensor, "backward", "backward")]
    originals = [getattr(owner, name) for owner, name, _ in patches]
    for (owner, name, part), fn in zip(patches, originals, strict=True):
        setattr(owner, name, _routed(fn, part))
    try:
        yield
    finally:
        for (owner, name, _), fn in zip(patches, originals, strict=True):
            setattr(owner, name, fn)


def _routed(fn: Callable, part: str) -> Callable:
    def timed(*args: Any, **kwargs: Any) -> Any:
        if not _ACTIVE:
            return fn(*args, **kwargs)
        return _ACTIVE[-1].wrap(part, fn)(*args, **kwargs)
    return timed


@contextlib.contextmanager
def _active(clock: PartClock) -> Iterator[None]:
    _ACTIVE.append(clock)
    try:
        yield
    finally:
        _ACTIVE.pop()


def first_batches(trainer, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` (inputs, positions) batches of the trainer's epoch, prepared ahead of any timing."""
    batches = []
    for batch in trainer.pipeline.batches(trainer.sampler):
        batches.append(batch)
        if len(batches) == n:
            break
    return batches


def step_parts(seconds: dict[str, float], steps: int) -> dict[str, float]:
    """Milliseconds per step of each of :data:`STEP_PARTS` from accumulated seconds."""
    s = defaultdict(float, seconds)
    parts = {
        "student forward": s["student forward"], "teacher pass": s["teacher pass"], "PL pieces": s["PL pieces"],
        STEP_PARTS[3]: s["target"] - s["PL pieces"], "point loss": s["point loss"],
        "proxies + neighbourhood": s["method"] - s["target"] - s["point loss"], "backward": s["backward"],
        "optimiser": s["optimiser"], "EMA": s["EMA"],
    }
    parts["other"] = s["step"] - sum(parts.values())
    parts["step"] = s["step"]
    return {k: 1000.0 * v / max(steps, 1) for k, v in parts.items()}


def epoch_parts(trainer, repeats: int = 2) -> dict[str, float]:
    """Seconds of each of :data:`EPOCH_PARTS` (median of ``repeats``; validation warmed up once)."""
    import numpy as np

    out: dict[str, list[float]] = defaultdict(list)
    from plm.training.sampler import knn_table

    trainer.selection.validate()  # the pretrained features' validation scores are computed once per run
    for _ in range(repeats):
        start = time.perf_counter()
        emb = trainer.pipeline.train_embeddings("teacher")
        out[EPOCH_PARTS[0]].append(time.perf_counter() - start)
        start = time.perf_counter()
        knn_table(emb, trainer.config.sampler.k, trainer.ctx, trainer.device)
        out[EPOCH_PARTS[1]].append(time.perf_counter() - start)
        start = time.perf_counter()
        trainer.selection.validate()
        out[EPOCH_PARTS[2]].append(time.perf_counter() - start)
    return {k: float(np.median(v)) for k, v in out.items()}


TENSOR_CODE = "/tensor"  # a method named with this suffix runs with the compiled kernels off (PLM_KERNELS=0)


@contextlib.contextmanager
def _kernels_for(name: str) -> Iterator[None]:
    """``PLM_KERNELS=0`` while a ``…/tensor`` method steps (plm.manifold.kernels reads it on every call)."""
    if not name.endswith(TENSOR_CODE):
        yield
        return
    before = os.environ.get("PLM_KERNELS")
    os.environ["PLM_KERNELS"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["PLM_KERNELS"]
        else:
            os.environ["PLM_KERNELS"] = before


def profile(dataset: str = "glyphs", methods: tuple[str, ...] = ("plm", "stml"), steps: int = 60, block: int = 10,
            embed_dim: int = 1280, busy: bool = False, threads: Optional[int] = None) -> dict[str, Any]:
    """Per-part milliseconds per step (and seconds per epoch) of each method, measured side by side.

    Every method's trainer runs the same ``steps`` batches (after 3 warm-up steps), in blocks of
    ``block`` steps taken in turn. ``plm/tensor`` is PLM with the PL model's tensor code instead of
    its compiled CPU kernels.
    """
    from plm.training.trainer import Trainer

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainers, clocks = {}, {}
            for name in methods:
                trainers[name] = Trainer(profile_config(dataset, name.removesuffix(TENSOR_CODE), embed_dim),
                                         os.path.join(tmp, name.replace("/", "-")), progress=False)
                trainers[name].start_epoch_state(0)
            first = trainers[methods[0]]
            warm = 3
            batches = first_batches(first, warm + steps)
            with busy_core(busy):
                for name, trainer in trainers.items():
                    with _kernels_for(name):
                        for inputs, positions in batches[:warm]:
                            trainer.step(inputs, positions)
                    clocks[name] = PartClock()
                    _instrument(trainer, clocks[name])
                timed = batches[warm:]
                with _shared_parts():
                    for start in range(0, len(timed), block):
                        for name, trainer in trainers.items():
                            with _active(clocks[name]), _kernels_for(name):
                                for inputs, positions in timed[start:start + block]:
                                    trainer.step(inputs, positions)
                step_ms = {n: step_parts(c.seconds, len(timed)) for n, c in clocks.items()}
                per_epoch = {}
                for name, trainer in trainers.items():
                    with _kernels_for(name):
                        per_epoch[name] = epoch_parts(trainer)
            return {"dataset": dataset, "steps": len(timed), "busy": busy, "threads": torch.get_num_threads(),
                    "steps_per_epoch": len(first.sampler), "embed_dim": embed_dim, "step_ms": step_ms,
                    "epoch_s": per_epoch}
    finally:
        torch.set_num_threads(before)


def profile_table(result: dict[str, Any], other: Optional[dict[str, Any]] = None) -> str:
    """The profile as a Markdown table; with ``other`` (the same run with a core busy) its ratios too."""
    names = list(result["step_ms"])
    base = names[1] if len(names) > 1 else None
    head = [f"{n} ms/step" for n in names] + ([f"{names[0]} / {base}"] if base else [])
    if other:
        head += [f"{n} busy / idle" for n in names]
    lines = ["| part | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for part in (*STEP_PARTS, "step"):
        row = [f"{result['step_ms'][n][part]:.2f}" for n in names]
        if base:
            row.append(_ratio(result["step_ms"][names[0]][part], result["step_ms"][base][part]))
        if other:
            row += [_ratio(other["step_ms"][n][part], result["step_ms"][n][part]) for n in names]
        label = f"**{part}**" if part == "step" else part
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    for part in EPOCH_PARTS:
        row = [f"{result['epoch_s'][n][part]:.2f}" for n in names]
        if base:
            row.append(_ratio(result["epoch_s"][names[0]][part], result["epoch_s"][base][part]))
        if other:
            row += [_ratio(other["epoch_s"][n][part], result["epoch_s"][n][part]) for n in names]
        lines.append(f"| {part}: seconds per epoch ({result['steps_per_epoch']} steps) | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b > 1e-9 else "–"


# ------------------------------------------------------------------------------ whole epochs

def epochs(dataset: str = "glyphs", methods: tuple[str, ...] = ("plm", "stml"), threads: tuple[int, ...] = (2, 1),
           embed_dim: int = 1280, batches_per_epoch: Optional[int] = None) -> list[dict[str, Any]]:
    """Wall seconds of one training epoch (``Trainer.run_epoch``) per method, thread count and
    idle / busy core (one warm-up epoch per trainer first)."""
    from plm.training.trainer import Trainer

    rows = []
    before = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in methods:
                cfg = profile_config(dataset, name, embed_dim)
                if batches_per_epoch:
                    cfg = profile_config_with(cfg, batches_per_epoch)
                trainer = Trainer(cfg, os.path.join(tmp, name), progress=False)
                trainer.run_epoch(0)  # warm-up
                for n in threads:
                    torch.set_num_threads(n)
                    for busy in (False, True):
                        with busy_core(busy):
                            start, cpu = time.perf_counter(), time.process_time()
                            row = trainer.run_epoch(0)
                            wall = time.perf_counter() - start
                            rows.append({"method": name, "threads": n, "busy": busy, "epoch_s": wall,
                                         "cpu_s": time.process_time() - cpu, "steps": len(trainer.sampler),
                                         "loss": row["loss"]})
                        print(json.dumps(rows[-1]), flush=True)
    finally:
        torch.set_num_threads(before)
    return rows


def profile_config_with(cfg, batches_per_epoch: int):
    """``cfg`` with ``sampler.batches_per_epoch`` set."""
    import dataclasses

    return dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, batches_per_epoch=batches_per_epoch))


def epochs_table(rows: list[dict[str, Any]]) -> str:
    """Epoch seconds per method and thread count, idle and busy, with the busy / idle ratio."""
    lines = ["| method | threads | idle epoch (s) | busy epoch (s) | busy / idle | idle CPU (s) | busy CPU (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    keyed = {(r["method"], r["threads"], r["busy"]): r for r in rows}
    for (method, n, busy), r in keyed.items():
        if busy:
            continue
        b = keyed[(method, n, True)]
        lines.append(f"| {method} | {n} | {r['epoch_s']:.2f} | {b['epoch_s']:.2f} | "
                     f"{_ratio(b['epoch_s'], r['epoch_s'])} | {r['cpu_s']:.2f} | {b['cpu_s']:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ 1 vs 2 processes

def _throughput_config(mode: str):
    from plm.training import default_config

    return default_config("digits", mode=mode, epochs=1, model={"image_size": 64},
                          sampler={"batch_size": 120, "k": 5}, data={"augment": False},
                          eval={"nmi": False, "baseline": False}, log={"progress": False, "tensorboard": False})


def _measure(mode: str, steps: int, out_dir: str, ctx=None) -> Optional[dict]:
    from plm.training.trainer import Trainer

    trainer = Trainer(_throughput_config(mode), out_dir, progress=False, ctx=ctx)
    trainer.start_epoch_state(0)
    batches = first_batches(trainer, steps + 1)
    trainer.step(*batches[0])  # warm-up
    clock = PartClock()  # the step's parts, timed from the outside (the trainer is not instrumented)
    pipe = trainer.pipeline
    trainer.method.forward = clock.wrap("method", trainer.method.forward)
    pipe.student.forward = clock.wrap("forward", pipe.student.forward)
    pipe.teacher.forward = clock.wrap("forward", pipe.teacher.forward)
    trainer.ctx.barrier()
    start = time.perf_counter()
    for inputs, positions in batches[1:]:
        trainer.step(inputs, positions)
    trainer.ctx.barrier()
    elapsed = time.perf_counter() - start
    if not trainer.ctx.is_main:
        return None
    n = len(batches) - 1
    t = clock.seconds
    return {"mode": mode, "world": trainer.ctx.world_size, "steps": n, "step_s": elapsed / n,
            "images_per_s": n * trainer.config.sampler.batch_size / elapsed,
            "share_method": t["method"] / elapsed, "share_forward": t["forward"] / elapsed,
            "share_backward_step": (elapsed - t["method"] - t["forward"]) / elapsed}


def _worker(rank: int, world: int, port: int, mode: str, steps: int, out_dir: str, result: str) -> None:
    import datetime

    from plm.training.distributed import init_distributed

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=600))
    try:
        row = _measure(mode, steps, out_dir, ctx=init_distributed("cpu"))
        if row is not None:
            with open(result, "w") as fh:
                json.dump(row, fh)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(mode: str, world: int, steps: int, threads: int = 2) -> dict:
    """Throughput of ``steps`` training steps in ``mode`` with ``world`` processes.

    One process uses ``threads`` threads; each of several processes uses one.
    """
    with tempfile.TemporaryDirectory() as tmp:
        if world == 1:
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                row = _measure(mode, steps, os.path.join(tmp, "run"))
                assert row is not None
                return {**row, "threads": threads}
            finally:
                torch.set_num_threads(before)
        result = os.path.join(tmp, "result.json")
        mp.spawn(_worker, args=(world, _free_port(), mode, steps, os.path.join(tmp, "run"), result), nprocs=world)
        with open(result) as fh:
            return {**json.load(fh), "threads": 1}


def throughput_table(rows: list[dict]) -> str:
    """The 1 vs 2 processes rows as a Markdown table."""
    lines = ["| mode | processes × threads | step (s) | images/s | PL model + losses | forward + gathers | "
             "backward + all-reduce + optimiser + EMA |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['world']} × {r['threads']} | {r['step_s']:.3f} | {r['images_per_s']:.0f} | "
                     f"{100 * r['share_method']:.0f}% | {100 * r['share_forward']:.0f}% | "
                     f"{100 * r['share_backward_step']:.0f}% |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ finetune memory

def _memory_config(recompute: str, image_size: int):
    from plm.training import default_config

    return default_config("digits", mode="finetune", epochs=1, recompute=recompute, model={"image_size": image_size},
                          sampler={"batch_size": 120, "k": 5}, eval={"nmi": False, "baseline": False},
                          log={"progress": False, "tensorboard": False})


def _memory_worker(recompute: str, image_size: int, steps: int, out: Any) -> None:
    import resource

    from plm.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PLM_CACHE_DIR"] = os.path.join(tmp, "cache")
        trainer = Trainer(_memory_config(recompute, image_size), os.path.join(tmp, "run"), progress=False)
        trainer.start_epoch_state(0)
        batches = first_batches(trainer, steps + 1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB → GiB
        trainer.step(*batches[0])  # warm-up
        start, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        for inputs, positions in batches[1:]:
            trainer.step(inputs, positions)
        n = max(len(batches) - 1, 1)
        step_s = (time.perf_counter() - start) / n
        end = resource.getrusage(resource.RUSAGE_SELF)
        out.put({"recompute": recompute, "on": trainer.pipeline.model.backbone.recompute, "image_size": image_size,
                 "peak_before_gib": before, "peak_gib": end.ru_maxrss / 2 ** 20, "step_s": step_s,
                 "step_sys_s": (end.ru_stime - usage.ru_stime) / n})


#: the memory case's settings: (``recompute``, torch's huge pages for large tensors, ``THP_MEM_ALLOC_ENABLE``)
MEMORY_SETTINGS = (("off", "0"), ("on", "0"), ("off", "1"), ("on", "1"))


def memory(settings: tuple[tuple[str, str], ...] = MEMORY_SETTINGS, image_size: int = 224, steps: int = 3,
           rounds: int = 2) -> list[dict[str, Any]]:
    """Peak memory and step time of finetune-mode training (digits at ``image_size``, B = 120) with
    the backbone's activations kept and recomputed, and torch's large tensors in 4 KB pages or in
    transparent huge pages (what ``plm``'s entry point asks for), each setting in a fresh process,
    in turn (``rounds`` times): the peak resident set before the first step (model, first passes)
    and after ``steps`` timed steps, the step's time and its system (kernel) time."""
    from plm.cli import HUGE_PAGES

    ctx = mp.get_context("spawn")
    rows = []
    before = os.environ.get(HUGE_PAGES)
    try:
        for _ in range(rounds):
            for recompute, huge in settings:
                os.environ[HUGE_PAGES] = huge  # the child reads it at its first large tensor
                queue = ctx.Queue()
                proc = ctx.Process(target=_memory_worker, args=(recompute, image_size, steps, queue))
                proc.start()
                row = {**queue.get(), "huge_pages": huge}
                proc.join()
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if before is None:
            os.environ.pop(HUGE_PAGES, None)
        else:
            os.environ[HUGE_PAGES] = before
    return rows


def memory_table(rows: list[dict[str, Any]]) -> str:
    """The memory case as a Markdown table."""
    lines = ["| recompute | huge pages | peak RSS before the steps, GiB | peak RSS, GiB | step, s | of it system, s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['recompute']} | {'yes' if r['huge_pages'] == '1' else 'no'} | {r['peak_before_gib']:.2f} "
                     f"| {r['peak_gib']:.2f} | {r['step_s']:.2f} | {r['step_sys_s']:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the arithmetic floor

def teacher_batch(dataset: str = "glyphs", embed_dim: int = 1280, step: int = 6):
    """The teacher embeddings (B, d) and manifold config of the ``step``-th batch of the profile's PLM trainer."""
    from plm.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(profile_config(dataset, "plm", embed_dim), tmp, progress=False)
        trainer.start_epoch_state(0)
        loss = trainer.method.loss
        seen: list[torch.Tensor] = []
        target = loss.target_similarity
        loss.target_similarity = lambda teacher: (seen.append(teacher.detach().clone()), target(teacher))[1]
        for inputs, positions in trainer.pipeline.batches(trainer.sampler):
            trainer.step(inputs, positions)
            if len(seen) == step:
                break
        return seen[-1], loss.config.manifold, loss.config.proxies.num


def floor(threads: tuple[int, ...] = (1, 2), dataset: str = "glyphs", embed_dim: int = 1280,
          repeats: int = 300) -> list[dict[str, Any]]:
    """Milliseconds of the work a PLM step has beyond an STML step that no fusing of operations
    removes, each part timed alone.

    The dense products of the proxy terms (the four the method needs: the teacher points at every
    proxy's location and basis, the student rows at every location and that product's two
    gradients; and the fifth the code runs, the neighbourhood term's gradient in the bases as one
    product over all points), the batch's float64 QR that its coordinates come from (or, at
    least, its float64 Gram matrix), the PL model's compiled kernels on a real batch (subset
    selection and local PCA of every anchor; every pair's o² and p² with their two products) and
    AdamW on the proxies' parameters. No elementwise work of the losses, no autograd.
    """
    from plm.manifold import kernels
    from plm.manifold.pieces import _candidates, batch_coordinates, fit_pieces, prepare
    from plm.manifold.similarity import NEAR_PIECE

    teacher, config, k = teacher_batch(dataset, embed_dim)
    x = prepare(teacher, config)
    b, d = x.shape
    m = config.piece_dim
    coords = batch_coordinates(x)
    gram = coords @ coords.T
    candidates = _candidates(x, config, None, gram, None)
    pieces = fit_pieces(x, config)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(b, d, generator=g)
    rho, rows = torch.randn(k, d, generator=g), torch.randn(k * m, d, generator=g)
    g_tab, g_loss = torch.randn(b, k * (m + 1), generator=g), torch.randn(b, k, generator=g)
    params = [torch.nn.Parameter(torch.randn(k, d, generator=g)), torch.nn.Parameter(torch.randn(k, d, m, generator=g))]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    table = torch.cat([rho, rows])

    def products() -> None:
        x @ table.T, z @ rho.T, g_loss @ rho, g_loss.T @ z

    def gram_only() -> None:
        centred = x.double() - x.double().mean(0)
        centred @ centred.T

    parts: dict[str, Callable[[], Any]] = {
        FLOOR_PARTS[0]: products,
        FLOOR_PARTS[1]: lambda: g_tab.T @ x,
        FLOOR_PARTS[2]: lambda: batch_coordinates(x),
        FLOOR_PARTS[3]: gram_only,
        FLOOR_PARTS[4]: lambda: kernels.fit_members(gram, candidates, config, x.dtype),
        FLOOR_PARTS[5]: lambda: kernels.directed_terms(coords, pieces.members, pieces.sizes, pieces.coefficients,
                                                       NEAR_PIECE),
        FLOOR_PARTS[6]: opt.step,
    }
    if not kernels.enabled(x):
        raise RuntimeError("the floor times the compiled kernels: install numba and leave PLM_KERNELS unset")
    before = torch.get_num_threads()
    out = []
    try:
        for n in threads:
            torch.set_num_threads(n)
            row: dict[str, Any] = {"threads": n}
            for name, fn in parts.items():
                for _ in range(20):
                    fn()
                start = time.perf_counter()
                for _ in range(repeats):
                    fn()
                row[name] = 1000 * (time.perf_counter() - start) / repeats
            out.append(row)
    finally:
        torch.set_num_threads(before)
    return out


#: the floor's parts, in the order of its table
FLOOR_PARTS = ("proxy terms: the four products they need", "neighbourhood gradient as one product (the code now)",
               "batch QR, float64 (the code now)", "batch Gram matrix, float64 (at least)",
               "PL model, compiled: selection + PCA", "PL model, compiled: every pair's o², p²",
               "AdamW on the proxies")
#: the floor's sums: the least any implementation does, and what the code does now
FLOOR_SUMS = {"**least: four products, Gram matrix, PL kernels, AdamW**": (0, 3, 4, 5, 6),
              "**the code now: five products, QR, PL kernels, AdamW**": (0, 1, 2, 4, 5, 6)}


def floor_table(rows: list[dict[str, Any]], stml_ms: float) -> str:
    """The floor as a Markdown table, against a quarter of STML's step (the room a 1.25× step leaves)."""
    lines = ["| part | " + " | ".join(f"{r['threads']} thread(s), ms" for r in rows) + " |",
             "|---|" + "---:|" * len(rows)]
    for name in FLOOR_PARTS:
        lines.append(f"| {name} | " + " | ".join(f"{r[name]:.2f}" for r in rows) + " |")
    for label, picked in FLOOR_SUMS.items():
        lines.append(f"| {label} | "
                     + " | ".join(f"{sum(r[FLOOR_PARTS[i]] for i in picked):.2f}" for r in rows) + " |")
    lines.append(f"| room in a step of 1.25 × STML's ({stml_ms:.2f} ms, the profile case, same run) | "
                 + " | ".join(f"{0.25 * stml_ms:.2f}" for _ in rows) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ command line

def main(argv: list[str]) -> int:
    """Run the chosen case and print its Markdown table."""
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(prog="bench_train", description=doc.splitlines()[0])
    parser.add_argument("--case", choices=["profile", "epoch", "throughput", "floor", "memory"], default="profile")
    parser.add_argument("--dataset", default="glyphs", help="profile and epoch cases (frozen mode, the preset)")
    parser.add_argument("--methods", nargs="+", default=["plm", "stml"], help="profile and epoch cases")
    parser.add_argument("--embed-dim", type=int, default=1280, help="the head's width (profile and epoch cases)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per method (profile: 60) or per configuration (throughput: 10)")
    parser.add_argument("--block", type=int, default=10, help="profile: steps per method taken in turn")
    parser.add_argument("--busy", choices=["no", "yes", "both"], default="no",
                        help="profile: measure with one core held by a spinning process (both: idle and busy)")
    parser.add_argument("--threads", nargs="+", type=int, default=None,
                        help="profile: the thread count (default: torch's); epoch: the counts compared (2 1); "
                             "throughput: the single-process counts (2 1)")
    parser.add_argument("--image-size", type=int, default=224, help="memory case: the images' side in pixels")
    parser.add_argument("--batches-per-epoch", type=int, default=None, help="epoch case: shorter epochs")
    parser.add_argument("--modes", nargs="+", default=["frozen", "finetune"], choices=["frozen", "finetune"])
    parser.add_argument("--worlds", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    if args.case == "profile":
        threads = args.threads[0] if args.threads else None
        kw = dict(dataset=args.dataset, methods=tuple(args.methods), steps=args.steps or 60, block=args.block,
                  embed_dim=args.embed_dim, threads=threads)
        idle = profile(**kw, busy=args.busy == "yes")
        busy = profile(**kw, busy=True) if args.busy == "both" else None
        print(json.dumps({"idle" if args.busy != "yes" else "busy": idle, "busy": busy}), flush=True)
        print(f"\n{args.dataset}, frozen mode, B = 120, {args.embed_dim}-d head, {idle['threads']} thread(s), "
              f"{idle['steps']} steps per method{', one core busy' if args.busy == 'yes' else ''}; "
              f"load average at start: {load:.1f}")
        print(profile_table(idle, busy))
    elif args.case == "floor":
        stml = profile(dataset=args.dataset, methods=("stml",), steps=args.steps or 60, block=args.block,
                       embed_dim=args.embed_dim)["step_ms"]["stml"]["step"]
        rows = floor(tuple(args.threads or (1, 2)), args.dataset, args.embed_dim)
        print(json.dumps({"stml_step_ms": stml, "floor": rows}), flush=True)
        print(f"\nload average at start: {load:.1f}")
        print(floor_table(rows, stml))
    elif args.case == "memory":
        rows = memory(image_size=args.image_size, steps=args.steps or 3)
        print(f"\nfinetune mode, digits at {args.image_size} px, B = 120; load average at start: {load:.1f}")
        print(memory_table(rows))
    elif args.case == "epoch":
        rows = epochs(args.dataset, tuple(args.methods), tuple(args.threads or (2, 1)), args.embed_dim,
                      args.batches_per_epoch)
        print(f"\nload average at start: {load:.1f}")
        print(epochs_table(rows))
    else:
        os.environ.setdefault("PLM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "plm-bench-cache"))
        rows = []
        for mode in args.modes:
            for world in args.worlds:
                for threads in ((args.threads or [2, 1]) if world == 1 else [1]):
                    row = run(mode, world, args.steps or 10, threads)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        print(f"\nload average at start: {load:.1f} (2 cores)")
        print(throughput_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
