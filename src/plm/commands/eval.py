"""``plm eval``: zero-shot retrieval metrics of a pretrained backbone, a trained checkpoint, or embeddings files."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Optional

from plm.commands._common import add_dataset_arguments, add_model_arguments, embed_labelled_split
from plm.evaluation.defaults import NMI_MAX_CLASSES, default_ks
from plm.utils.args import positive_int
from plm.utils.tables import format_table, metrics_headers, metrics_row

NAME = "eval"
HELP = "zero-shot retrieval metrics (Recall@K, MAP@R, R-precision, NMI) on a dataset split or embeddings files"
DESCRIPTION = (HELP + ". --embeddings FILE scores a plm embed file as it is (no model runs); --query and "
               "--gallery each take a labelled folder or a plm embed file, so a collection embedded once is "
               "never embedded again. --per-class adds each class's metrics.")
EXAMPLE = """plm eval --dataset folder --data-root photos/ --split all --backbone efficientnet_lite0 --json metrics.json
  plm eval --embeddings photos.npz --per-class
  plm eval --query queries/ --gallery photos.npz"""
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser, default_split="test", required=False)
    parser.add_argument("--embeddings", default=None, metavar="FILE",
                        help="a plm embed file of a labelled folder: its vectors scored leave-one-out (no model runs)")
    parser.add_argument("--query", default=None, metavar="DIR|FILE",
                        help="query images, one sub-folder per class, or their plm embed file (with --gallery, "
                             "instead of --dataset)")
    parser.add_argument("--gallery", default=None, metavar="DIR|FILE",
                        help="gallery images, one sub-folder per class, or their plm embed file: each query "
                             "retrieves among all of them")
    add_model_arguments(parser)
    parser.add_argument("--recall-at", type=positive_int, nargs="+", default=None, help="K values (default by dataset)")
    nmi = parser.add_mutually_exclusive_group()
    nmi.add_argument("--no-nmi", action="store_true", help="skip NMI (k-means is the slow part on big splits)")
    nmi.add_argument("--nmi", action="store_true",
                     help=f"compute NMI even when the split has more than {NMI_MAX_CLASSES} classes (SOP: very slow)")
    parser.add_argument("--per-class", action="store_true",
                        help="also each class's metrics (its queries' Recall@K, MAP@R, R-precision), printed and "
                             "in --json as per_class")
    parser.add_argument("--faiss", action="store_true", help="exact search with faiss when installed")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the metrics as JSON")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --json file that is not plm's metrics")


def _is_embeddings_file(path: str) -> bool:
    from plm.utils.paths import npz_format

    return Path(path).is_file() and npz_format(path) == "plm-embeddings"


class _Side:
    """One labelled set (a folder embedded now, or an embeddings file): vectors and class names per item."""

    def __init__(self, vectors: Any, names: list[str], skipped: int, model: Optional[dict[str, Any]], where: str):
        self.vectors, self.names, self.skipped, self.model, self.where = vectors, names, skipped, model, where


def _from_file(path: str, flag: str) -> _Side:
    from plm.commands._common import load_searchable_store
    from plm.errors import UserError

    store = load_searchable_store(path)
    if (store.labels < 0).any():
        raise UserError(f"{flag} {path}: metrics need class labels, and this embeddings file has unlabelled images; "
                        f"embed a folder with one sub-folder per class ({store.root}/<class>/<image>.jpg)")
    names = [store.class_names.get(int(y), str(int(y))) for y in store.labels]
    return _Side(store.vectors, names, len(store.skipped), store.model, path)


def _from_folder(path: str, flag: str, model: Any, args: argparse.Namespace) -> _Side:
    from plm.commands._common import runtime_from_args
    from plm.data.folder import load_image_folder
    from plm.errors import UserError
    from plm.evaluation import embed_dataset

    ds = load_image_folder(path)
    if not ds.is_labelled:
        raise UserError(f"{flag} {path}: query/gallery metrics need class labels: put every image in a "
                        f"sub-folder named after its class ({path}/<class>/<image>.jpg)")
    emb = embed_dataset(model, ds, batch_size=args.batch_size, cache_dir=False if args.no_cache else None,
                        progress=not args.quiet, **runtime_from_args(args))
    if emb.skipped:
        log.warning("skipped %d unreadable image(s) under %s, e.g. %s", len(emb.skipped), ds.root,
                    ", ".join(emb.skipped[:3]))
    class_names = ds.class_names or {}  # a labelled folder names its classes
    names = [class_names[int(y)] for y in emb.labels]
    return _Side(emb.vectors, names, len(emb.skipped), None, path)


def _model_for_folders(args: argparse.Namespace, files: list[_Side]) -> Any:
    """The model that embeds the folder side(s): ``--backbone`` / ``--checkpoint``, or the one the
    embeddings file(s) record (they must agree: vectors of two models are not comparable)."""
    from plm.commands._common import model_from_args
    from plm.errors import UserError
    from plm.search import describe, model_from_identity, model_identity

    recorded = files[0].model if files else None
    if recorded is None:
        return model_from_args(args)
    if args.backbone is None and args.checkpoint is None:
        return model_from_identity(recorded)
    model = model_from_args(args)
    ident = model_identity(model, backbone=args.backbone, checkpoint=args.checkpoint, weights=args.weights)
    if ident["fingerprint"] != recorded.get("fingerprint"):
        raise UserError(f"{files[0].where} was embedded with {describe(recorded)}, not {describe(ident)}: vectors of "
                        f"two models cannot be compared; leave out --backbone/--checkpoint to use the file's model")
    return model


def _sides(args: argparse.Namespace) -> tuple[_Side, _Side]:
    from plm.errors import UserError
    from plm.search import describe

    items = [(args.query, "--query"), (args.gallery, "--gallery")]
    files = {flag: _from_file(path, flag) for path, flag in items if _is_embeddings_file(path)}
    found = list(files.values())
    if len(found) == 2 and found[0].model.get("fingerprint") != found[1].model.get("fingerprint"):  # type: ignore[union-attr]
        raise UserError(f"--query {args.query} and --gallery {args.gallery} were embedded with different models "
                        f"({describe(found[0].model or {})} and {describe(found[1].model or {})}); their vectors "
                        f"cannot be compared: embed both with one model")
    if len(found) == 2 and (args.backbone or args.checkpoint):
        raise UserError("--query and --gallery are both embeddings files: they record their model; leave out "
                        "--backbone/--checkpoint")
    model = None if len(found) == 2 else _model_for_folders(args, found)
    out = [files[flag] if flag in files else _from_folder(path, flag, model, args) for path, flag in items]
    return out[0], out[1]


def _report(args: argparse.Namespace, metrics: dict[str, Any], name: str, ks: list[int],
            class_names: dict[int, str]) -> None:
    """Print the table (and with --per-class each class's row); ``metrics["per_class"]`` is re-keyed by class
    name here, as --json writes it."""
    heads = metrics_headers([str(k) for k in ks])
    print(format_table(heads, [metrics_row(name, metrics)]))
    if "per_class" in metrics:
        per = {class_names.get(int(label), label): m for label, m in metrics.pop("per_class").items()}
        metrics["per_class"] = per
        print(f"per class ({len(per)} classes):")
        print(format_table(["class", "queries", "left out", *heads[1:-1]],
                           [[c, m["num_queries"], m["num_left_out"], *metrics_row(c, m)[1:-1]] for c, m in per.items()],
                           left=(0,)))


def _score(args: argparse.Namespace, vectors: Any, labels: Any, ks: list[int], **reference: Any) -> dict[str, Any]:
    from plm.evaluation import retrieval_metrics

    return retrieval_metrics(vectors, labels, ks=ks, with_nmi=not args.no_nmi, use_faiss=args.faiss,
                             nmi_max_classes=None if args.nmi else NMI_MAX_CLASSES, per_class=args.per_class,
                             **reference)


def _run_query_gallery(args: argparse.Namespace) -> int:
    """``--query DIR|FILE --gallery DIR|FILE``: classes are matched by sub-folder name."""
    import numpy as np

    from plm.utils.io import atomic_write_json

    q, g = _sides(args)
    names = sorted(set(q.names) | set(g.names))
    label_of = {n: i for i, n in enumerate(names)}
    ql = np.array([label_of[n] for n in q.names], dtype=np.int64)
    gl = np.array([label_of[n] for n in g.names], dtype=np.int64)
    ks = args.recall_at or default_ks("folder")
    metrics = _score(args, q.vectors, ql, ks, reference=g.vectors, reference_labels=gl)
    name = args.backbone or args.checkpoint or "embeddings"
    print(f"query {args.query}: {metrics['num_queries']} images ({metrics['num_left_out']} left out: their class "
          f"is not in the gallery); gallery {args.gallery}: {metrics['num_reference']} images; {len(names)} classes")
    _report(args, metrics, name, ks, dict(enumerate(names)))
    if args.json:
        atomic_write_json({"query": str(args.query), "gallery": str(args.gallery),
                           "skipped": q.skipped + g.skipped, **metrics}, args.json)
    return 0


def _run_embeddings(args: argparse.Namespace) -> int:
    """``--embeddings FILE``: the file's vectors, leave-one-out, with its sub-folder labels."""
    import numpy as np

    from plm.search import describe
    from plm.utils.io import atomic_write_json

    side = _from_file(args.embeddings, "--embeddings")
    names = sorted(set(side.names))
    label_of = {n: i for i, n in enumerate(names)}
    labels = np.array([label_of[n] for n in side.names], dtype=np.int64)
    ks = args.recall_at or default_ks("folder")
    metrics = _score(args, side.vectors, labels, ks)
    left = f" ({metrics['num_left_out']} left out: no other item of their class)" if metrics["num_left_out"] else ""
    print(f"{args.embeddings}: {metrics['num_queries']} queries{left}, {len(names)} classes; "
          f"{describe(side.model or {})}")
    _report(args, metrics, "embeddings", ks, dict(enumerate(names)))
    if args.json:
        atomic_write_json({"embeddings": str(args.embeddings), "skipped": side.skipped, **metrics}, args.json)
    return 0


def run(args: argparse.Namespace) -> int:
    from plm.errors import UserError
    from plm.utils.io import atomic_write_json
    from plm.utils.paths import METRICS_JSON, check_output_file

    if args.json:  # before the embedding pass, so an unusable path fails at once
        check_output_file(args.json, "--json", [args.checkpoint, args.weights, args.data_root, args.embeddings,
                                                args.query, args.gallery], METRICS_JSON, args.force)
    if args.embeddings:
        if args.dataset or args.query or args.gallery:
            raise UserError("give --embeddings FILE alone, without --dataset, --query or --gallery")
        if args.backbone or args.checkpoint:
            raise UserError(f"--embeddings {args.embeddings} records the model that made it; leave out "
                            f"--backbone/--checkpoint")
        return _run_embeddings(args)
    if args.query or args.gallery:
        if not (args.query and args.gallery) or args.dataset:
            raise UserError("give --query and --gallery together (each a labelled folder or a plm embed file), "
                            "without --dataset")
        return _run_query_gallery(args)
    if not args.dataset:
        raise UserError("give --dataset NAME, --embeddings FILE, or --query and --gallery")
    dataset, emb = embed_labelled_split(args, "retrieval metrics")
    ks = args.recall_at or default_ks(args.dataset)
    metrics = _score(args, emb.vectors, emb.labels, ks)
    name = args.backbone or args.checkpoint
    left = f" ({metrics['num_left_out']} left out: no other item of their class)" if metrics["num_left_out"] else ""
    print(f"{args.dataset} / {args.split}: {metrics['num_queries']} queries{left}, {dataset.num_classes} classes")
    _report(args, metrics, name, ks, dict(dataset.class_names or {}))
    if args.json:
        atomic_write_json({"dataset": args.dataset, "split": args.split, "skipped": len(emb.skipped), **metrics},
                          args.json)
    return 0
