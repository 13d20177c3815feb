"""Training step throughput: 1 process vs 2 processes (gloo), frozen and finetune modes.

A step is what :meth:`plm.training.trainer.Trainer.step` does: student and teacher forward, the
gathers, the method (PL model + losses), backward, gradient all-reduce, AdamW, scheduler and EMA
update. Batches are prepared beforehand, so image decoding is not counted. Frozen mode trains the
embedding head on cached EfficientNet-Lite0 features; finetune mode trains the whole network at
64 px. Both use |B| = 120 (k = 5) on digits images (the content does not change the cost). With 2
processes each runs 1 thread on half of every global batch; 1 process runs 2 threads.

    python -m benchmarks.bench_train [--steps 10] [--modes frozen finetune] [--worlds 1 2] [--threads 2 1]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from typing import Optional

import torch
import torch.multiprocessing as mp


def _config(mode: str):
    from plm.training import default_config

    return default_config("digits", mode=mode, epochs=1, model={"image_size": 64},
                          sampler={"batch_size": 120, "k": 5}, data={"augment": False},
                          eval={"nmi": False, "baseline": False}, log={"progress": False, "tensorboard": False})


def _measure(mode: str, steps: int, out_dir: str, ctx=None) -> Optional[dict]:
    from plm.training.trainer import Trainer

    trainer = Trainer(_config(mode), out_dir, progress=False, ctx=ctx)
    trainer.start_epoch_state(0)
    batches = []
    for inputs, positions in trainer.pipeline.batches(trainer.sampler):
        batches.append((inputs, positions))
        if len(batches) == steps + 1:
            break
    trainer.step(*batches[0])  # warm-up
    trainer.timings = {}
    trainer.ctx.barrier()
    start = time.perf_counter()
    for inputs, positions in batches[1:]:
        trainer.step(inputs, positions)
    trainer.ctx.barrier()
    elapsed = time.perf_counter() - start
    if not trainer.ctx.is_main:
        return None
    n = len(batches) - 1
    t = trainer.timings
    return {"mode": mode, "world": trainer.ctx.world_size, "steps": n, "step_s": elapsed / n,
            "images_per_s": n * trainer.config.sampler.batch_size / elapsed,
            "share_method": t["method"] / elapsed, "share_forward": t["forward"] / elapsed,
            "share_backward_step": t["backward_step"] / elapsed}


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
                return {**_measure(mode, steps, os.path.join(tmp, "run")), "threads": threads}
            finally:
                torch.set_num_threads(before)
        result = os.path.join(tmp, "result.json")
        mp.spawn(_worker, args=(world, _free_port(), mode, steps, os.path.join(tmp, "run"), result), nprocs=world)
        with open(result) as fh:
            return {**json.load(fh), "threads": 1}


def main(argv: list[str]) -> int:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(prog="bench_train", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--modes", nargs="+", default=["frozen", "finetune"], choices=["frozen", "finetune"])
    parser.add_argument("--worlds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1],
                        help="thread counts of the single-process runs (several processes use 1 each)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PLM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "plm-bench-cache"))
    load = os.getloadavg()[0]
    rows = []
    for mode in args.modes:
        for world in args.worlds:
            for threads in (args.threads if world == 1 else [1]):
                row = run(mode, world, args.steps, threads)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\nload average at start: {load:.1f} (2 cores)")
    print("| mode | processes × threads | step (s) | images/s | PL model + losses | forward + gathers | "
          "backward + all-reduce + optimiser + EMA |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['world']} × {r['threads']} | {r['step_s']:.3f} | {r['images_per_s']:.0f} | "
              f"{100 * r['share_method']:.0f}% | {100 * r['share_forward']:.0f}% | "
              f"{100 * r['share_backward_step']:.0f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
