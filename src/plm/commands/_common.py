"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import logging
from typing import Any, Optional

from plm.data import DATASETS
from plm.utils.args import non_negative_int, positive_int
from plm.utils.choices import AMP_MODES, DEVICES, SPLITS

log = logging.getLogger(__name__)
#: the backbone of every model command when neither --backbone nor --checkpoint is given: its weights
#: ship with plm, so it works offline out of the box
DEFAULT_BACKBONE = "efficientnet_lite0"


def add_dataset_arguments(parser: argparse.ArgumentParser, default_split: str = "test", required: bool = True) -> None:
    """``--dataset``, ``--data-root``, ``--split``, ``--limit``."""
    parser.add_argument("--dataset", required=required, choices=DATASETS.names(), help="dataset name")
    parser.add_argument("--data-root", default=None, help="dataset root folder (official layout)")
    parser.add_argument("--split", default=default_split, choices=list(SPLITS),
                        help="train = seen classes, val = held-out seen classes, test = unseen classes")
    parser.add_argument("--val-classes", type=non_negative_int, default=0,
                        help="seen classes held out as the val split")
    parser.add_argument("--limit", type=positive_int, default=None, help="use a seeded random subset of N images")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backbone`` | ``--checkpoint``, ``--weights``, ``--image-size``, ``--batch-size``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--backbone", help=f"pretrained backbone (pooled features, L2-normalised): a name of plm "
                                          f"backbones (torchvision's: resnet50, vit_b_16, convnext_tiny …) or "
                                          f"timm:NAME; default {DEFAULT_BACKBONE}, whose weights ship with plm")
    group.add_argument("--checkpoint", help="a plm checkpoint (plm train output)")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="a local weights file for the backbone, instead of its published ImageNet weights "
                             "(those are taken from the standard cache, or downloaded into it when online)")
    parser.add_argument("--image-size", type=positive_int, default=None,
                        help="input resolution (default: the model's own)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    add_runtime_arguments(parser)


def add_runtime_arguments(parser: argparse.ArgumentParser, amp: bool = True, workers: bool = True) -> None:
    """``--device``, ``--amp`` and ``--workers``: where and how a model runs (see :mod:`plm.utils.device`)."""
    parser.add_argument("--device", default="auto", choices=list(DEVICES),
                        help="where the model runs; auto = CUDA when a GPU is present, else the CPU")
    if amp:
        parser.add_argument("--amp", nargs="?", const="auto", default="off", choices=list(AMP_MODES),
                            help="mixed precision (autocast): bare --amp = bf16 where the GPU supports it, else "
                                 "fp16; on the CPU only bf16 (slower unless the CPU has bfloat16 instructions)")
    if workers:
        parser.add_argument("--workers", type=int, default=None, metavar="N",
                            help="DataLoader processes decoding images (default: up to 4 on CUDA, 0 on the CPU)")


def runtime_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``{"device", "amp", "num_workers"}`` keyword arguments for :func:`plm.evaluation.embed_dataset`.

    Raises:
        UserError: ``--device cuda`` without a GPU, ``--amp fp16`` on the CPU, negative ``--workers``.
    """
    from plm.utils.device import amp_dtype, default_workers, resolve_device

    device = resolve_device(getattr(args, "device", "auto") or "auto")
    return {"device": device, "amp": amp_dtype(getattr(args, "amp", "off"), device),
            "num_workers": default_workers(device, getattr(args, "workers", None))}


def default_model(args: argparse.Namespace) -> None:
    """Fill in ``args.backbone`` with :data:`DEFAULT_BACKBONE` when no model source was given."""
    if not any(getattr(args, name, None) for name in ("backbone", "checkpoint", "features", "embeddings")):
        args.backbone = DEFAULT_BACKBONE


def model_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~plm.models.EmbeddingModel` that ``--backbone``/``--checkpoint`` (default:
    :data:`DEFAULT_BACKBONE`), ``--weights`` and ``--image-size`` name (see
    :func:`plm.models.factory.build_embedder`)."""
    from plm.models.factory import build_embedder

    default_model(args)
    return build_embedder(backbone=args.backbone, checkpoint=args.checkpoint, weights=args.weights,
                          image_size=args.image_size)


def embed_labelled_split(args: argparse.Namespace, needed_for: str) -> tuple[Any, Any]:
    """(dataset, embeddings) of the labelled split named by the dataset and model arguments.

    Raises:
        UserError: the split has no labels (``needed_for``, a plural, names what needs them).
    """
    from plm.data import load_dataset
    from plm.errors import UserError
    from plm.evaluation import embed_dataset

    runtime = runtime_from_args(args)  # a bad --device fails before any loading
    dataset = load_dataset(args.dataset, args.split, root=args.data_root,
                           val_classes=args.val_classes).limit(args.limit)
    if not dataset.is_labelled:
        raise UserError(f"{args.dataset}: {needed_for} need class labels; this split has unlabelled images "
                        f"(for --dataset folder, put each class in its own sub-folder)")
    emb = embed_dataset(model_from_args(args), dataset, batch_size=args.batch_size,
                        cache_dir=False if args.no_cache else None, progress=not getattr(args, "quiet", False),
                        **runtime)
    if emb.skipped:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(emb.skipped), ", ".join(emb.skipped[:3]))
    return dataset, emb


def load_searchable_store(path: str) -> Any:
    """The :class:`~plm.search.EmbeddingStore` at ``path``, with the vector checks of ``plm index``.

    Raises:
        UserError: not a plm embeddings file, no vectors, vectors that are NaN, infinite or all zeros
            (they cannot be searched or drawn), or vectors of another dimension than the recorded model's.
    """
    from plm.errors import UserError
    from plm.search import EmbeddingStore
    from plm.search.checks import bad_rows, describe_bad_rows
    from plm.utils.paths import display_path

    store = EmbeddingStore.load(path)
    if len(store) == 0:
        raise UserError(f"{path} holds no vectors; run plm embed on a folder with readable images")
    if store.bad_rows().any():
        raise UserError(f"{path}: {describe_bad_rows(store.paths, *bad_rows(store.vectors), display_path)}; "
                        f"such vectors cannot be searched: re-run plm embed with the same --out (it recomputes them)")
    if store.dim != int(store.model.get("dim", store.dim)):
        raise UserError(f"dimension mismatch in {path}: vectors are {store.dim}-d but the recorded model "
                        f"gives {store.model.get('dim')}-d embeddings; re-create it with plm embed --full")
    return store


def collection_root(recorded: str, given: Optional[str], needed_for: str = "") -> Any:
    """The indexed (embedded) image folder: ``--root`` when given, else the one the file records.

    When it is missing (the collection moved): with ``needed_for`` (what needs its images: ``"the HTML
    gallery's thumbnails"``) one error suggesting ``--root``, as ``plm serve``; else a warning.

    Raises:
        UserError: the folder is missing and its images are needed.
    """
    from pathlib import Path

    from plm.errors import UserError

    root = Path(given) if given else Path(recorded)
    if not root.is_dir():
        where = "--root" if given else "the indexed folder"
        if needed_for:
            raise UserError(f"{where} is missing: {root}; {needed_for} need its images: pass --root DIR to point at "
                            f"its new location")
        log.warning("warning: %s is missing: %s; the results name its files where they were (pass --root DIR "
                    "to point at its new location)", where, root)
    return root
