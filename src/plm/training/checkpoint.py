"""Training checkpoints: ``last.pt`` / ``best.pt``, written atomically, read without unpickling.

A checkpoint is a :func:`plm.models.save_model`-compatible payload (``model_config`` and
``model_state``: the exported network, so ``plm.models.load_model`` and ``plm eval --checkpoint``
read it) plus everything needed to resume: student, teacher, method (proxies, pseudo-labels),
optimiser, scheduler, epoch, sampler state, RNG states, history, best score and the resolved
config. Only tensors and plain containers are stored (RNG states as tensors and lists, the config
as a dict), so loading uses ``torch.load(weights_only=True)``.

The pair is committed atomically at one point, the rename of ``last.pt`` (:func:`commit_checkpoints`):
an improved epoch is first written to ``best.pt.pending``, then ``last.pt`` (which records the best
epoch) replaces the previous one, then the pending file becomes ``best.pt``. A process killed at
any instant leaves either the previous committed pair (the pending file is uncommitted and
discarded) or the new ``last.pt`` with its best still pending (rolled forward);
:func:`recover_checkpoints` does that and removes temporary files left by killed writes.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from plm.utils.io import atomic_torch_save, remove_stale_temp_files, safe_torch_load
from plm.utils.paths import CHECKPOINT, CONFIG_YAML, METRICS_CSV, METRICS_JSON, SUMMARY_JSON

#: the files of a run folder and the kind each must be to be replaced (``last.pt`` is never
#: replaced without ``--resume``, which reads it first)
RUN_FILES = {"config.yaml": CONFIG_YAML, "metrics.csv": METRICS_CSV, "metrics.json": METRICS_JSON,
             "summary.json": SUMMARY_JSON, "best.pt": CHECKPOINT}

FORMAT = "plm-train-checkpoint"
VERSION = 1
REQUIRED = ("model_config", "model_state", "student_state", "teacher_state", "method_state", "optimizer_state",
            "scheduler_state", "epoch", "global_step", "rng", "sampler_state", "config", "history", "best")


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) RNG states as tensors and plain containers."""
    # legacy=True (the default) always gives the tuple form
    name, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float],
                                              np.random.get_state(legacy=True))
    version, state, gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(state), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (CUDA states only where CUDA is in use)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a training checkpoint atomically (temp file + rename)."""
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload misses {missing}")
    atomic_torch_save({"format": FORMAT, "version": VERSION, **payload}, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint for resuming.

    Raises:
        FileNotFoundError: no file.
        ValueError: corrupt or truncated, holding pickled objects, not a plm training checkpoint,
            or written by an incompatible version.
    """
    ckpt = safe_torch_load(path)
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a plm training checkpoint (a model-only checkpoint cannot be resumed)")
    if ckpt.get("version") != VERSION:
        raise ValueError(f"{path} has checkpoint version {ckpt.get('version')}; this plm reads version {VERSION}")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is an incomplete training checkpoint (missing {', '.join(missing)})")
    return ckpt


def checkpoint_paths(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(last.pt, best.pt) in ``out_dir``."""
    out = Path(out_dir)
    return out / "last.pt", out / "best.pt"


def pending_best_path(best_path: str | os.PathLike) -> Path:
    """Where an improved epoch waits until ``last.pt`` commits it (``best.pt.pending``)."""
    best_path = Path(best_path)
    return best_path.with_name(best_path.name + ".pending")


def commit_checkpoints(payload: dict[str, Any], last_path: str | os.PathLike, best_path: str | os.PathLike,
                       improved: bool, best_payload: dict[str, Any] | None = None) -> None:
    """Write ``last.pt`` (and ``best.pt`` when ``improved``) with the rename of ``last.pt`` as the
    single commit point (see the module docs). ``payload["best"]`` must name the best epoch, which is
    ``best_payload["epoch"]`` when the best checkpoint is not this epoch's (the pretrained features)."""
    pending = pending_best_path(best_path)
    if improved:
        save_checkpoint(payload if best_payload is None else best_payload, pending)
    save_checkpoint(payload, last_path)  # the commit point
    if improved:
        os.replace(pending, best_path)


def _epoch_of(path: Path) -> int | None:
    try:
        epoch = safe_torch_load(path).get("epoch")
        return None if epoch is None else int(epoch)
    except (ValueError, TypeError, FileNotFoundError):
        return None


def recover_checkpoints(out_dir: str | os.PathLike) -> list[str]:
    """Bring ``out_dir`` back to its last committed state after a kill; returns what was done.

    Removes the temporary files of interrupted writes, rolls a pending ``best.pt`` forward when
    ``last.pt`` committed it, and discards it when ``last.pt`` did not (or is absent: nothing was
    committed). A ``last.pt`` that cannot be read cannot tell, so the pending file is then kept.
    """
    last, best = checkpoint_paths(out_dir)
    pending = pending_best_path(best)
    done = [f"removed {p.name}" for p in remove_stale_temp_files(out_dir)]
    if pending.is_file():
        committed = None
        if last.is_file():
            try:
                committed = int(safe_torch_load(last)["best"]["epoch"])
            except (ValueError, KeyError, TypeError, FileNotFoundError):
                done.append(f"kept {pending.name}: {last.name} cannot be read, so whether it was committed is unknown")
                return done
        if committed is not None and _epoch_of(pending) == committed:
            os.replace(pending, best)
            done.append(f"completed {best.name} (epoch {committed})")
        else:
            pending.unlink()
            done.append(f"discarded the uncommitted {pending.name}")
    return done


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's epoch (independent streams for every (seed, epoch, rank))."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


#: config keys that may differ between a run and its resumption
RESUME_FREE_KEYS = ("device", "amp", "threads", "recompute", "log.progress", "log.tensorboard", "data.num_workers",
                    "eval.batch_size", "model.head_init")  # the head comes from the checkpoint


def resume_differences(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The config keys, other than :data:`RESUME_FREE_KEYS`, in which a checkpoint's config and a
    run's differ, both read as they take effect: options a checkpoint of an older version did not
    know take their defaults, and ``data.augment`` is what it means in the mode (old checkpoints
    stored ``true`` in frozen mode)."""
    from plm.training.config import TrainConfig, config_diff
    from plm.utils.config import deep_merge

    def view(c: dict[str, Any]) -> dict[str, Any]:
        c = deep_merge(TrainConfig().to_dict(), c)
        out = {**c, "data": dict(c.get("data", {}))}
        augment = out["data"].get("augment")
        out["data"]["augment"] = c.get("mode") == "finetune" and augment is not False
        return out

    return [k for k in config_diff(view(saved), view(config)) if k not in RESUME_FREE_KEYS]
