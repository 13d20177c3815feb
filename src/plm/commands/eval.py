"""``plm eval``: zero-shot retrieval metrics of a pretrained backbone or a trained checkpoint."""

from __future__ import annotations

import argparse

from plm.commands._common import (
    add_dataset_arguments, add_model_arguments, embed_labelled_split, format_table, metrics_headers, metrics_row,
)
from plm.evaluation.metrics import NMI_MAX_CLASSES, default_ks
from plm.utils.args import positive_int

NAME = "eval"
HELP = "zero-shot retrieval metrics (Recall@K, MAP@R, R-precision, NMI) on a dataset split"


def add_arguments(parser: argparse.ArgumentParser) -> None:  # noqa: D103
    add_dataset_arguments(parser, default_split="test")
    add_model_arguments(parser)
    parser.add_argument("--recall-at", type=positive_int, nargs="+", default=None, help="K values (default by dataset)")
    nmi = parser.add_mutually_exclusive_group()
    nmi.add_argument("--no-nmi", action="store_true", help="skip NMI (k-means is the slow part on big splits)")
    nmi.add_argument("--nmi", action="store_true",
                     help=f"compute NMI even when the split has more than {NMI_MAX_CLASSES} classes (SOP: very slow)")
    parser.add_argument("--faiss", action="store_true", help="exact search with faiss when installed")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the metrics as JSON")
    parser.add_argument("--force", action="store_true", help="replace an existing --json file that is not plm's metrics")


def run(args: argparse.Namespace) -> int:  # noqa: D103
    from plm.evaluation import retrieval_metrics
    from plm.utils.io import atomic_write_json
    from plm.utils.paths import METRICS_JSON, check_output_file

    if args.json:  # before the embedding pass, so an unusable path fails at once
        check_output_file(args.json, "--json", [args.checkpoint, args.weights, args.data_root], METRICS_JSON, args.force)
    dataset, emb = embed_labelled_split(args, "retrieval metrics")
    ks = args.recall_at or default_ks(args.dataset)
    metrics = retrieval_metrics(emb.vectors, emb.labels, ks=ks, with_nmi=not args.no_nmi, use_faiss=args.faiss,
                                nmi_max_classes=None if args.nmi else NMI_MAX_CLASSES)
    name = args.backbone or args.checkpoint
    print(f"{args.dataset} / {args.split}: {metrics['num_queries']} queries, {dataset.num_classes} classes")
    print(format_table(metrics_headers([str(k) for k in ks]), [metrics_row(name, metrics)]))
    if args.json:
        atomic_write_json({"dataset": args.dataset, "split": args.split, "skipped": len(emb.skipped), **metrics}, args.json)
    return 0
