"""Distributed training (gloo on CPU, loopback only) against single-process training.

Each test spawns 2 processes with ``torch.multiprocessing`` on a free 127.0.0.1 port. The single-process
runs they are compared with are spawned too (a process group of one): a fresh process, as a user's run.
Run inside pytest's own process after the rest of the suite, the reference ended 1e-3 away from the
ranks in the head's weights (3e-4 for k-means), and equal when the test ran alone: something earlier
tests leave in that process changes the run (not pinned down; the head's start already differed in the
last bit of some entries).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from plm.training.distributed import shutdown_distributed

pytestmark = pytest.mark.distributed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int) -> None:
    import datetime

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=120))


def _run_then_exit(rank: int, fn, *args) -> None:
    """``fn(rank, *args)``; on success the process ends without the interpreter's finalisation, as ``plm``'s
    entry point does after a process group (see ``joined_process_group``); an exception reaches the parent."""
    fn(rank, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spawn(fn, world: int, *args) -> None:
    mp.spawn(_run_then_exit, args=(fn, world, _free_port(), *args), nprocs=world, join=True)


def _tiny_config(epochs: int, method: str = "plm"):
    from plm.training import default_config

    # PL candidates from the seed groups (the glyph default): the global batch must keep each group together
    manifold = {"group_size": 5} if method == "plm" else {}
    # a head whose every direction carries variance of the training features: the full-width head's
    # directions without any start at outputs of rounding size and the loss grows whatever noise they
    # get, so two computations of the same step that round differently part there within a few steps
    # (on a CPU whose matrix kernels round 15 and 30 rows differently: 1.4e-3 after 6 steps;
    # docs/training.md, "Distributed training")
    return default_config("digits", method=method, mode="frozen", epochs=epochs,
                          model={"embed_dim": 128, "head_init": "pca"},
                          log={"progress": False, "tensorboard": False},
                          sampler={"batch_size": 30, "k": 5, "batches_per_epoch": 3}, proxies={"num": 6},
                          eval={"nmi": False, "baseline": False}, data={"limit": 300}, manifold=manifold)


def _train_worker(rank: int, world: int, port: int, out: str, epochs: int, stop_after, resume: bool,
                  cache: str, method: str = "plm") -> None:
    os.environ["PLM_CACHE_DIR"] = cache
    _init(rank, world, port)
    try:
        from plm.training.distributed import init_distributed
        from plm.training.trainer import Trainer

        ctx = init_distributed("cpu")
        assert ctx.world_size == world and ctx.rank == rank
        Trainer(_tiny_config(epochs, method), out, progress=False, resume=resume, ctx=ctx).run(stop_after=stop_after)
    finally:
        shutdown_distributed()


def _states(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {f"{part}.{k}": v for part in ("student_state", "teacher_state", "method_state")
            for k, v in ckpt[part].items()}


def _assert_close(a: Path, b: Path, atol: float) -> None:
    sa, sb = _states(a), _states(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=atol, rtol=0), (k, (sa[k] - sb[k]).abs().max())


@pytest.mark.slow
def test_two_processes_match_one_and_resume_with_another_world_size(tmp_path, monkeypatch) -> None:
    """2 ranks reach the single-process weights; a 2-rank run resumed on 1 rank ends where 1 rank does."""
    import shutil

    cache = str(tmp_path / "cache")
    monkeypatch.setenv("PLM_CACHE_DIR", cache)
    single = tmp_path / "single"
    _spawn(_train_worker, 1, str(single), 3, 2, False, cache)  # fills the feature cache the ranks read
    shutil.copy(single / "last.pt", tmp_path / "single_epoch2.pt")
    _spawn(_train_worker, 1, str(single), 3, None, True, cache)

    dist = tmp_path / "dist"
    _spawn(_train_worker, 2, str(dist), 3, 2, False, cache)
    _assert_close(dist / "last.pt", tmp_path / "single_epoch2.pt", atol=1e-5)
    hist_d = torch.load(dist / "last.pt", weights_only=True)["history"]
    hist_s = torch.load(tmp_path / "single_epoch2.pt", weights_only=True)["history"]
    for hd, hs in zip(hist_d, hist_s, strict=True):
        for key in ("loss", "loss_point", "loss_proxy", "loss_neighbourhood", "val_map_at_r"):
            if hs.get(key) is not None:
                assert hd[key] == pytest.approx(hs[key], abs=1e-5), key

    _spawn(_train_worker, 1, str(dist), 3, None, True, cache)  # resume the 2-rank run on 1 process
    _assert_close(dist / "last.pt", single / "last.pt", atol=1e-5)


@pytest.mark.slow
def test_kmeans_pseudo_labels_from_rank_zero_reach_every_rank(tmp_path, monkeypatch) -> None:
    """k-means runs on rank 0 only; the broadcast labels give the single-process weights."""
    cache = str(tmp_path / "cache")
    monkeypatch.setenv("PLM_CACHE_DIR", cache)
    _spawn(_train_worker, 1, str(tmp_path / "single"), 2, None, False, cache, "kmeans")
    _spawn(_train_worker, 2, str(tmp_path / "dist"), 2, None, False, cache, "kmeans")
    labels = torch.load(tmp_path / "dist" / "last.pt", weights_only=True)["method_state"]["pseudo_labels"]
    assert labels.numel() == 300 and labels.unique().numel() > 1
    _assert_close(tmp_path / "dist" / "last.pt", tmp_path / "single" / "last.pt", atol=1e-5)


def _embed_worker(rank: int, world: int, port: int, out: str, n: int) -> None:
    _init(rank, world, port)
    try:
        from plm.data import load_dataset
        from plm.models import ModelConfig, create_model
        from plm.training.distributed import init_distributed
        from plm.training.pipeline import embed_distributed

        ctx = init_distributed("cpu")
        torch.manual_seed(0)
        model = create_model(ModelConfig(embed_dim=16, image_size=32))
        ds = load_dataset("digits", "test").limit(n)
        vec, labels, kept = embed_distributed(model, ds, ctx, batch_size=8)
        if ctx.is_main:
            np.savez(out, vec=vec.numpy(), labels=labels, kept=kept)
    finally:
        shutdown_distributed()


@pytest.mark.slow
def test_distributed_embedding_equals_single_process(tmp_path) -> None:
    """Uneven shards (51 items on 2 ranks), gathered in order, no duplicates."""
    from plm.data import load_dataset
    from plm.evaluation import embed_dataset, retrieval_metrics
    from plm.models import ModelConfig, create_model

    out = str(tmp_path / "emb.npz")
    _spawn(_embed_worker, 2, out, 51)
    got = np.load(out)
    torch.manual_seed(0)
    model = create_model(ModelConfig(embed_dim=16, image_size=32))
    ref = embed_dataset(model, load_dataset("digits", "test").limit(51), batch_size=8, cache_dir=False, progress=False)
    assert got["kept"].tolist() == list(range(51))
    assert np.array_equal(got["labels"], ref.labels)
    assert np.allclose(got["vec"], ref.vectors, atol=1e-5)
    a = retrieval_metrics(got["vec"], got["labels"], with_nmi=False)
    b = retrieval_metrics(ref.vectors, ref.labels, with_nmi=False)
    assert a["recall_at"] == b["recall_at"] and a["map_at_r"] == pytest.approx(b["map_at_r"])


def _collectives_worker(rank: int, world: int, port: int, out: str) -> None:
    _init(rank, world, port)
    try:
        from plm.training.distributed import init_distributed

        ctx = init_distributed("cpu")
        # uneven gather
        local = torch.arange(rank * 10, rank * 10 + 3 + rank, dtype=torch.float32)
        gathered = ctx.gather_uneven(local)
        # autograd-aware gather: rank r's loss is sum(all_gather(x) * (r + 1) * w), so the gradient
        # reaching rank s sums every rank's loss: (1 + 2) * w[s's slice]
        x = torch.ones(2, requires_grad=True)
        w = torch.arange(2 * world, dtype=torch.float32)
        (ctx.gather_with_grad(x) * w * (rank + 1)).sum().backward()
        shard = ctx.shard(7)
        if ctx.is_main:
            torch.save({"gathered": gathered}, out + ".0")
        torch.save({"grad": x.grad, "shard": torch.as_tensor(shard)}, f"{out}.{rank}.r")
    finally:
        shutdown_distributed()


def test_collectives(tmp_path) -> None:
    out = str(tmp_path / "c")
    _spawn(_collectives_worker, 2, out)
    g = torch.load(out + ".0", weights_only=True)["gathered"]
    assert g.tolist() == [0, 1, 2, 10, 11, 12, 13]
    r0, r1 = (torch.load(f"{out}.{r}.r", weights_only=True) for r in (0, 1))
    assert r0["grad"].tolist() == [0, 3] and r1["grad"].tolist() == [6, 9]
    assert r0["shard"].tolist() + r1["shard"].tolist() == list(range(7))


def _failing_worker(rank: int, world: int, port: int) -> None:
    _init(rank, world, port)
    if rank == 1:
        raise RuntimeError("rank 1 broke on purpose")
    torch.distributed.barrier()  # rank 0 waits for a peer that died


@pytest.mark.slow
def test_a_failed_rank_stops_the_job(tmp_path) -> None:
    with pytest.raises(Exception, match="rank 1 broke on purpose"):
        _spawn(_failing_worker, 2)
