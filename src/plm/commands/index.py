"""``plm index``: build a nearest-neighbour index from an embeddings file, with a recall check."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from plm.utils.args import positive_int
from plm.utils.choices import INDEX_KINDS, INDEX_METRICS
from plm.utils.tables import format_table

NAME = "index"
HELP = "build a search index (exact, HNSW, IVF or PQ) from a plm embed file, and report its recall vs exact search"
EXAMPLE = "plm index photos.npz --out photos-index.npz --kind hnsw --hnsw-m 32 --recall-k 10"
log = logging.getLogger(__name__)
AUTO_EXACT_MAX = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("embeddings", help="embeddings file from plm embed (.npz)")
    parser.add_argument("--out", required=True, help="index file to write (.npz)")
    parser.add_argument("--kind", default="auto", choices=["auto", *INDEX_KINDS],
                        help=f"auto: exact up to {AUTO_EXACT_MAX:,} vectors (or without faiss), hnsw above; "
                             f"pq = 4-bit PQ fast scan of every vector + exact re-rank "
                             f"(for embeddings without cluster structure)")
    parser.add_argument("--metric", default="auto", choices=["auto", *INDEX_METRICS],
                        help="auto: cosine when the vectors are unit-norm (plm embeddings are), else l2")
    parser.add_argument("--hnsw-m", dest="m", type=positive_int, default=32, help="HNSW links per node (M)")
    parser.add_argument("--M", dest="m", type=positive_int, default=argparse.SUPPRESS,  # old spelling
                        help=argparse.SUPPRESS)
    parser.add_argument("--ef-construction", type=positive_int, default=80, help="HNSW build beam width")
    parser.add_argument("--ef-search", type=positive_int, default=None, help="HNSW search beam width (default: tuned)")
    parser.add_argument("--nlist", type=positive_int, default=None, help="IVF cells (default 4·sqrt(N))")
    parser.add_argument("--nprobe", type=positive_int, default=None,
                        help="IVF cells visited per query (default: tuned)")
    parser.add_argument("--pq-m", type=positive_int, default=None, help="PQ sub-quantizers (must divide the dimension)")
    parser.add_argument("--k-factor", type=positive_int, default=None,
                        help="PQ candidates re-ranked, × k (default: tuned)")
    parser.add_argument("--target-recall", type=float, default=0.95,
                        help="tune ef-search / nprobe / k-factor until the estimated recall@k vs exact reaches this")
    parser.add_argument("--recall-k", dest="recall_k", type=positive_int, default=10, help="k of the recall@k check")
    parser.add_argument("-k", dest="recall_k", type=positive_int, default=argparse.SUPPRESS,  # old spelling
                        help=argparse.SUPPRESS)
    parser.add_argument("--recall-sample", type=positive_int, default=1000,
                        help="vectors of the collection used as check queries")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file that is not a plm index")


def run(args: argparse.Namespace) -> int:
    from plm.commands._common import load_searchable_store
    from plm.errors import UserError
    from plm.search import SearchIndex, VectorIndex, tune_search
    from plm.search.index import have_faiss
    from plm.utils.paths import INDEX, check_output_file

    check_output_file(args.out, "--out", inputs=[args.embeddings], kind=INDEX, force=args.force)
    store = load_searchable_store(args.embeddings)
    if not 0 < args.target_recall <= 1:
        raise UserError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    kind = args.kind
    if kind == "auto":
        kind = "exact" if len(store) <= AUTO_EXACT_MAX or not have_faiss() else "hnsw"
        if len(store) > AUTO_EXACT_MAX and kind == "exact":
            log.warning("faiss is not installed: building an exact index (pip install faiss-cpu for hnsw/ivf/pq)")
    for dest, applies in (("ef_search", "hnsw"), ("nlist", "ivf"), ("nprobe", "ivf"), ("pq_m", "pq"),
                          ("k_factor", "pq")):
        if getattr(args, dest) is not None and kind != applies:
            flag = "--" + dest.replace("_", "-")
            log.warning("%s applies to %s indexes only; ignored for this %s index", flag, applies, kind)
    index = VectorIndex.build(store.vectors, kind, args.metric, M=args.m, ef_construction=args.ef_construction,
                              ef_search=args.ef_search, nlist=args.nlist, nprobe=args.nprobe, pq_m=args.pq_m,
                              k_factor=args.k_factor)
    rows = []
    if index.search_param is not None:  # the knob's flag has the knob's name: --ef-search, --nprobe, --k-factor
        fixed = getattr(args, index.search_param)
        rows = tune_search(index, store.vectors, target=args.target_recall, k=args.recall_k, sample=args.recall_sample,
                           values=[fixed] if fixed else None)
    extra = {"embeddings": str(Path(args.embeddings).resolve()), "recall_k": args.recall_k, "recall": rows}
    SearchIndex(index, store.paths, store.labels, store.root, store.model, store.class_names, extra).save(args.out)
    print(f"{args.out}: {kind} index of {index.count} vectors ({index.dim}-d, {index.metric})"
          + (f", {index.params}" if index.params else ""))
    if rows:
        k = min(args.recall_k, index.count - 1)
        sample = min(args.recall_sample, index.count)
        print(f"recall@{k} vs exact search on {sample} of the collection's own vectors (self-match excluded):")
        print(format_table([rows[0]["param"], f"recall@{k}", "queries/s"],
                           [[r["value"], r["recall"], round(r["qps"])] for r in rows]))
        best = rows[-1]
        print(f"estimated recall@{k}: {best['recall']:.4f} at {best['param']}={best['value']}")
        if best["recall"] < args.target_recall:
            log.warning("target recall %.2f not reached; raise --%s (or use --kind exact)", args.target_recall,
                        best["param"].replace("_", "-"))
    return 0
