"""``plm eval``: zero-shot retrieval metrics of a pretrained backbone or a trained checkpoint."""

from __future__ import annotations

import argparse

from plm.commands._common import add_dataset_arguments, add_model_arguments, embed_labelled_split
from plm.evaluation.defaults import NMI_MAX_CLASSES, default_ks
from plm.utils.args import positive_int
from plm.utils.tables import format_table, metrics_headers, metrics_row

NAME = "eval"
HELP = "zero-shot retrieval metrics (Recall@K, MAP@R, R-precision, NMI) on a dataset split"
EXAMPLE = "plm eval --dataset folder --data-root photos/ --split all --backbone efficientnet_lite0 --json metrics.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser, default_split="test", required=False)
    parser.add_argument("--query", default=None, metavar="DIR",
                        help="query images, one sub-folder per class (with --gallery, instead of --dataset)")
    parser.add_argument("--gallery", default=None, metavar="DIR",
                        help="gallery images, one sub-folder per class: each query retrieves among all of them")
    add_model_arguments(parser)
    parser.add_argument("--recall-at", type=positive_int, nargs="+", default=None, help="K values (default by dataset)")
    nmi = parser.add_mutually_exclusive_group()
    nmi.add_argument("--no-nmi", action="store_true", help="skip NMI (k-means is the slow part on big splits)")
    nmi.add_argument("--nmi", action="store_true",
                     help=f"compute NMI even when the split has more than {NMI_MAX_CLASSES} classes (SOP: very slow)")
    parser.add_argument("--faiss", action="store_true", help="exact search with faiss when installed")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the metrics as JSON")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --json file that is not plm's metrics")


def _labelled_folder(path: str, flag: str):
    from plm.data.folder import load_image_folder
    from plm.errors import UserError

    ds = load_image_folder(path)
    if not ds.is_labelled:
        raise UserError(f"{flag} {path}: query/gallery metrics need class labels: put every image in a "
                        f"sub-folder named after its class ({path}/<class>/<image>.jpg)")
    return ds


def _run_query_gallery(args: argparse.Namespace) -> int:
    """``--query DIR --gallery DIR``: classes are matched by sub-folder name."""
    import logging

    import numpy as np

    from plm.commands._common import model_from_args
    from plm.evaluation import embed_dataset, retrieval_metrics
    from plm.utils.io import atomic_write_json

    sets = [_labelled_folder(args.query, "--query"), _labelled_folder(args.gallery, "--gallery")]
    names = sorted({n for ds in sets for n in ds.class_names.values()})
    label_of = {n: i for i, n in enumerate(names)}
    model = model_from_args(args)
    embs = []
    for ds in sets:
        ds.labels = np.array([label_of[ds.class_names[int(y)]] for y in ds.labels], dtype=np.int64)
        ds.class_names = dict(enumerate(names))
        emb = embed_dataset(model, ds, batch_size=args.batch_size, cache_dir=False if args.no_cache else None)
        if emb.skipped:
            logging.getLogger(__name__).warning("skipped %d unreadable image(s) under %s, e.g. %s", len(emb.skipped),
                                                ds.root, ", ".join(emb.skipped[:3]))
        embs.append(emb)
    q, g = embs
    ks = args.recall_at or default_ks("folder")
    metrics = retrieval_metrics(q.vectors, q.labels, ks=ks, with_nmi=not args.no_nmi, use_faiss=args.faiss,
                                nmi_max_classes=None if args.nmi else NMI_MAX_CLASSES,
                                reference=g.vectors, reference_labels=g.labels)
    name = args.backbone or args.checkpoint
    print(f"query {args.query}: {metrics['num_queries']} images ({metrics['num_left_out']} left out: their class "
          f"is not in the gallery); gallery {args.gallery}: {metrics['num_reference']} images; {len(names)} classes")
    print(format_table(metrics_headers([str(k) for k in ks]), [metrics_row(name, metrics)]))
    if args.json:
        atomic_write_json({"query": str(args.query), "gallery": str(args.gallery),
                           "skipped": len(q.skipped) + len(g.skipped), **metrics}, args.json)
    return 0


def run(args: argparse.Namespace) -> int:
    from plm.errors import UserError
    from plm.evaluation import retrieval_metrics
    from plm.utils.io import atomic_write_json
    from plm.utils.paths import METRICS_JSON, check_output_file

    if args.json:  # before the embedding pass, so an unusable path fails at once
        check_output_file(args.json, "--json", [args.checkpoint, args.weights, args.data_root], METRICS_JSON,
                          args.force)
    if args.query or args.gallery:
        if not (args.query and args.gallery) or args.dataset:
            raise UserError("give --query DIR and --gallery DIR together, without --dataset")
        return _run_query_gallery(args)
    if not args.dataset:
        raise UserError("give --dataset NAME (or --query DIR --gallery DIR)")
    dataset, emb = embed_labelled_split(args, "retrieval metrics")
    ks = args.recall_at or default_ks(args.dataset)
    metrics = retrieval_metrics(emb.vectors, emb.labels, ks=ks, with_nmi=not args.no_nmi, use_faiss=args.faiss,
                                nmi_max_classes=None if args.nmi else NMI_MAX_CLASSES)
    name = args.backbone or args.checkpoint
    left = f" ({metrics['num_left_out']} left out: no other item of their class)" if metrics["num_left_out"] else ""
    print(f"{args.dataset} / {args.split}: {metrics['num_queries']} queries{left}, {dataset.num_classes} classes")
    print(format_table(metrics_headers([str(k) for k in ks]), [metrics_row(name, metrics)]))
    if args.json:
        atomic_write_json({"dataset": args.dataset, "split": args.split, "skipped": len(emb.skipped), **metrics},
                          args.json)
    return 0
