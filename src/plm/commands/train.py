"""``plm train``: unsupervised training (PLM or a peer method), frozen or finetune mode, 1..N processes."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from plm.utils.args import non_negative_int, positive_int, seed_int
from plm.utils.choices import AMP_MODES, DEVICES, MODES

NAME = "train"
HELP = "train an embedding model without labels (PLM, STML or k-means pseudo-labels)"
DESCRIPTION = """Train an embedding model without labels and evaluate the best checkpoint on the test split.

Settings come from, in increasing priority: built-in defaults (with a preset per dataset), --config
FILE (YAML), the flags below, and KEY=VALUE overrides with dotted keys (loss.delta=1.2,
proxies.num=0, manifold.subset_selection=false, similarity=binary); values are YAML scalars.
Outputs in --out: config.yaml (resolved), last.pt / best.pt, metrics.csv (per epoch),
metrics.json (test metrics of best.pt, as plm eval --json) and summary.json.
Sizes the training set cannot support (proxies.num, kmeans.num_clusters, sampler.batch_size) are
capped with a one-line notice before any feature extraction.
Distributed: torchrun --nproc_per_node=N -m plm train ... (gloo on CPU, NCCL on CUDA)."""
EXAMPLE = "plm train --dataset folder --data-root photos/ --epochs 5 --out runs/photos --device auto"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from plm.data import DATASETS
    from plm.training.registry import METHODS

    parser.add_argument("--config", default=None, metavar="FILE", help="YAML config file (see configs/)")
    parser.add_argument("--dataset", default=None, choices=list(DATASETS), help="dataset name")
    parser.add_argument("--data-root", default=None, metavar="DIR", help="dataset root folder")
    parser.add_argument("--backbone", default=None, help="backbone name (model.backbone)")
    parser.add_argument("--method", default=None, choices=METHODS.names(), help="training method")
    parser.add_argument("--mode", default=None, choices=[m for m in MODES if m != "auto"],
                        help="frozen: cached backbone features, trains the embedding head (no augmentation); "
                             "finetune: the whole network")
    parser.add_argument("--epochs", type=positive_int, default=None, help="training epochs (>= 1)")
    parser.add_argument("--seed", type=seed_int, default=None, help="random seed")
    parser.add_argument("--device", default=None, choices=list(DEVICES),
                        help="where training runs (config default: auto = CUDA when a GPU is present)")
    parser.add_argument("--amp", nargs="?", const="auto", default=None, choices=list(AMP_MODES),
                        help="mixed precision of the training forward passes (config default: off); bare --amp = "
                             "bf16 where the GPU supports it, else fp16 with loss scaling; on the CPU only bf16")
    parser.add_argument("--workers", type=non_negative_int, default=None, metavar="N",
                        help="DataLoader processes decoding images (data.num_workers; config default 0); "
                             "4 or so help finetune mode on a GPU")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default runs/<dataset>-<method>-<mode>-seed<seed>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from last.pt (its config.yaml is used when no --config)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress output or notices (warnings and errors still show)")
    parser.add_argument("--no-progress", dest="quiet", action="store_true", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)  # old spelling of --quiet
    parser.add_argument("--force", action="store_true",
                        help="replace files in --out with plm's names (config.yaml, metrics.json …) "
                             "that plm did not write")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. loss.delta=1.2")


def unknown_argument_hint(extra: list[str]) -> str:
    """For ``plm train --lr 0.01``: the config keys an unknown ``--flag`` may mean, as ``KEY=VALUE`` overrides."""
    import difflib

    from plm.training.config import TrainConfig
    from plm.utils.config import valid_keys

    keys = valid_keys(TrainConfig)
    for arg in extra:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0].replace("-", "_").lower()
        leaves = {k: k.rsplit(".", 1)[-1] for k in keys}
        found = [k for k, leaf in leaves.items() if leaf == name or leaf.startswith(name + "_")] or \
            [k for k in keys if name in k] or difflib.get_close_matches(name, keys, n=3, cutoff=0.6)
        if found:
            return (f"settings without a flag are KEY=VALUE overrides: did you mean "
                    f"{' or '.join(f'{k}=VALUE' for k in found[:3])}? (plm train --print-config lists every key)")
    return "settings without a flag are KEY=VALUE overrides (plm train --print-config lists every key)"


def _flags(args: argparse.Namespace) -> dict:
    return {"dataset": args.dataset, "data_root": args.data_root, "model.backbone": args.backbone,
            "method": args.method, "mode": args.mode, "epochs": args.epochs, "seed": args.seed, "device": args.device,
            "amp": args.amp, "data.num_workers": args.workers}


def run(args: argparse.Namespace) -> int:
    from plm.training.config import resolve_config

    config_file = args.config
    if args.resume and config_file is None and args.out and (Path(args.out) / "config.yaml").is_file():
        config_file = Path(args.out) / "config.yaml"
    config = resolve_config(config_file, _flags(args), args.overrides)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    out = Path(args.out or f"runs/{config.dataset}-{config.method}-{config.mode}-seed{config.seed}")

    from plm.training.distributed import env_world_size

    if env_world_size() > 1:
        return _run_distributed(config, out, args)
    return _report(_train(config, out, args))


def _train(config, out: Path, args: argparse.Namespace):
    from plm.training import train

    return train(config, out, progress=not args.quiet, resume=args.resume, force=args.force)


def _run_distributed(config, out: Path, args: argparse.Namespace) -> int:
    import os

    from plm.training.distributed import shutdown_distributed

    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # only rank 0 talks
        logging.getLogger().setLevel(logging.WARNING)
    finished = False
    try:
        result = _train(config, out, args)
        finished = True
    except Exception as err:
        print(f"plm train: rank {rank} of {os.environ.get('WORLD_SIZE')} failed: {type(err).__name__}: {err}",
              file=sys.stderr, flush=True)
        raise
    finally:
        shutdown_distributed(wait=finished)  # a failed rank must not wait for the others
    return _report(result) if rank == 0 else 0


def _report(result) -> int:
    from plm.training.selection import PRETRAINED
    from plm.utils.tables import format_table, metrics_headers, metrics_row

    best = "the pretrained features" if result.best_epoch == PRETRAINED else f"epoch {result.best_epoch}"
    print(f"best: {best} (selected on {result.selection.replace('_', ' ')}); checkpoint {result.best_checkpoint}")
    if result.training_helped is not False:  # "did not help" was already said, as a warning
        print(result.verdict)
    if result.test_metrics is not None:
        ks = list(result.test_metrics["recall_at"])
        rows = []
        if result.baseline_metrics is not None:
            rows.append(metrics_row("pretrained", result.baseline_metrics, ks))
        rows.append(metrics_row(result.config.method, result.test_metrics, ks))
        print(f"{result.config.dataset} / test: {result.test_metrics['num_queries']} queries")
        print(format_table(metrics_headers(ks), rows))
    else:
        print("no labelled test split: no test metrics (see summary.json)")
    return 0
