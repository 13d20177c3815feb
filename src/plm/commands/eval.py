"""``plm eval``: zero-shot retrieval metrics of a pretrained backbone or a trained checkpoint."""

from __future__ import annotations

import argparse
import logging

from plm.commands._common import (
    add_dataset_arguments, add_model_arguments, format_table, metrics_headers, metrics_row, model_from_args,
)

NAME = "eval"
HELP = "zero-shot retrieval metrics (Recall@K, MAP@R, R-precision, NMI) on a dataset split"
log = logging.getLogger(__name__)
NMI_MAX_CLASSES = 1000  # k-means with more clusters than this is skipped unless --nmi is given


def default_ks(dataset: str) -> list[int]:
    """The field's Recall@K list: 1/10/100/1000 on SOP, 1/2/4/8 elsewhere."""
    return [1, 10, 100, 1000] if dataset == "sop" else [1, 2, 4, 8]


def add_arguments(parser: argparse.ArgumentParser) -> None:  # noqa: D103
    add_dataset_arguments(parser, default_split="test")
    add_model_arguments(parser)
    parser.add_argument("--recall-at", type=int, nargs="+", default=None, help="K values (default by dataset)")
    nmi = parser.add_mutually_exclusive_group()
    nmi.add_argument("--no-nmi", action="store_true", help="skip NMI (k-means is the slow part on big splits)")
    nmi.add_argument("--nmi", action="store_true",
                     help=f"compute NMI even when the split has more than {NMI_MAX_CLASSES} classes (SOP: very slow)")
    parser.add_argument("--faiss", action="store_true", help="exact search with faiss when installed")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the metrics as JSON")


def run(args: argparse.Namespace) -> int:  # noqa: D103
    from plm.data import load_dataset
    from plm.evaluation import embed_dataset, retrieval_metrics
    from plm.utils.io import atomic_write_json

    from plm.errors import UserError

    dataset = load_dataset(args.dataset, args.split, root=args.data_root, val_classes=args.val_classes).limit(args.limit)
    if not dataset.is_labelled:
        raise UserError(f"{args.dataset}: retrieval metrics need class labels; this split has unlabelled images "
                        f"(for --dataset folder, put each class in its own sub-folder)")
    model = model_from_args(args)
    emb = embed_dataset(model, dataset, batch_size=args.batch_size, cache_dir=False if args.no_cache else None)
    if emb.skipped:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(emb.skipped), ", ".join(emb.skipped[:3]))
    ks = args.recall_at or default_ks(args.dataset)
    with_nmi = not args.no_nmi
    n_classes = len(set(emb.labels.tolist()))
    if with_nmi and not args.nmi and n_classes > NMI_MAX_CLASSES:
        log.info("NMI skipped: k-means with %d clusters is very slow (pass --nmi to compute it anyway)", n_classes)
        with_nmi = False
    metrics = retrieval_metrics(emb.vectors, emb.labels, ks=ks, with_nmi=with_nmi, use_faiss=args.faiss)
    name = args.backbone or args.checkpoint
    print(f"{args.dataset} / {args.split}: {metrics['num_queries']} queries, {dataset.num_classes} classes")
    print(format_table(metrics_headers([str(k) for k in ks]), [metrics_row(name, metrics)]))
    if args.json:
        atomic_write_json({"dataset": args.dataset, "split": args.split, "skipped": len(emb.skipped), **metrics}, args.json)
    return 0
