"""``plm search``: query an index with image files, embedding them with the index's own model."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from plm.commands._common import add_runtime_arguments
from plm.utils.args import positive_int

NAME = "search"
HELP = "find the nearest images of an index to query images (files or folders); print, --json or --html"
EXAMPLE = "plm search photos-index.npz query.jpg more-queries/ -k 5 --html results.html"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", help="index file from plm index (.npz)")
    parser.add_argument("queries", nargs="+", metavar="QUERY", help="query image files or folders of images")
    parser.add_argument("-k", type=positive_int, default=10, help="results per query")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    parser.add_argument("--html", default=None, metavar="OUT", help="write a self-contained HTML gallery")
    parser.add_argument("--checkpoint", default=None,
                        help="the index's checkpoint at a new location (it must be the same model)")
    parser.add_argument("--root", default=None, help="the indexed image folder at a new location")
    parser.add_argument("--exclude-self", action=argparse.BooleanOptionalAction, default=True,
                        help="leave a query that is a file of the indexed folder out of its own results, as plm "
                             "serve does (--no-exclude-self keeps it, at distance 0)")
    parser.add_argument("--ef-search", type=positive_int, default=None, help="override the HNSW search beam width")
    parser.add_argument("--nprobe", type=positive_int, default=None, help="override the IVF cells visited per query")
    parser.add_argument("--k-factor", type=positive_int, default=None,
                        help="override the PQ candidates re-ranked (× k)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="query images per forward pass")
    add_runtime_arguments(parser)
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --json / --html file that is not a plm search report")


def own_ids(queries: list[str], root: Path, paths: list[str]) -> list[int]:
    """The index id of each query that is a file of the indexed folder ``root`` (``-1`` for the others)."""
    id_of = {p: i for i, p in enumerate(paths)}
    resolved = root.resolve()
    out = []
    for q in queries:
        try:
            rel = Path(q).resolve().relative_to(resolved).as_posix()
        except ValueError:
            rel = ""
        out.append(id_of.get(rel, -1))
    return out


def _query_label(query: str, root: Path, class_names: dict[int, str]) -> Optional[int]:
    """The class of a query that lies in a class sub-folder of the indexed folder, else None."""
    if not class_names:
        return None
    try:
        rel = Path(query).resolve().relative_to(root.resolve())
    except ValueError:
        return None
    if len(rel.parts) < 2:
        return None
    by_name = {v: k for k, v in class_names.items()}
    return by_name.get(rel.parts[0])


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from plm.commands._common import collection_root, runtime_from_args
    from plm.errors import UserError
    from plm.evaluation import embed_dataset
    from plm.search import SearchIndex, describe, model_from_identity
    from plm.search.queries import PathListDataset, collect_queries
    from plm.utils.io import atomic_write_json
    from plm.utils.paths import HTML, SEARCH_JSON, check_output_file, display_path

    if args.k < 1:
        raise UserError(f"-k must be >= 1, got {args.k}")
    inputs = [args.index, args.checkpoint, *args.queries]
    if args.json:
        check_output_file(args.json, "--json", inputs, SEARCH_JSON, args.force, others=[("--html", args.html)])
    if args.html:
        check_output_file(args.html, "--html", inputs, HTML, args.force)
    runtime = runtime_from_args(args)
    idx = SearchIndex.load(args.index)
    root = collection_root(idx.root, args.root, "the HTML gallery's thumbnails" if args.html else "")
    queries, unreadable = collect_queries(args.queries)
    if unreadable:
        log.warning("skipped %d unreadable query file(s): %s", len(unreadable), ", ".join(unreadable[:5]))
    for name, kind, value in (("ef_search", "hnsw", args.ef_search), ("nprobe", "ivf", args.nprobe),
                              ("k_factor", "pq", args.k_factor)):
        if value is not None:
            if idx.index.search_param != name:
                raise UserError(f"--{name.replace('_', '-')} applies to {kind} indexes; this one is {idx.index.kind}")
            idx.index.set_search_param(value)
    model = model_from_identity(idx.model, checkpoint=args.checkpoint)
    emb = embed_dataset(model, PathListDataset(queries), batch_size=args.batch_size, cache_dir=False,
                        progress=len(queries) > args.batch_size and not args.quiet, **runtime)
    if emb.skipped:  # decoded fine a moment ago; reaching here means the files changed under us
        raise UserError(f"query image(s) became unreadable while searching: {', '.join(emb.skipped[:5])}")
    own = own_ids(emb.ids, root, idx.paths)
    dist, ids = idx.index.search(emb.vectors, args.k, exclude=np.asarray(own) if args.exclude_self else None)

    def label_name(y: int) -> Optional[str]:
        return None if y < 0 else idx.class_names.get(y, str(y))

    results: list[dict[str, Any]] = []
    for q, drow, irow, self_id in zip(emb.ids, dist, ids, own, strict=True):
        hits = [{"rank": r + 1, "path": idx.paths[i], "file": str(root / PurePosixPath(idx.paths[i])),
                 "distance": float(d), "label": label_name(int(idx.labels[i]))}
                for r, (d, i) in enumerate(zip(drow, irow, strict=True)) if i >= 0]
        excluded = idx.paths[self_id] if args.exclude_self and self_id >= 0 else None
        results.append({"query": q, "excluded": excluded, "results": hits})
        print(f"query: {display_path(q)}" + (" (itself left out of its results: --no-exclude-self keeps it)"
                                             if excluded is not None else ""))
        for h in hits:
            print(f"  {h['rank']:>3}. {h['distance']:.4f}  {display_path(h['path'])}"
                  + (f"  [{display_path(h['label'])}]" if h["label"] else ""))
    metric = "1 - cosine similarity" if idx.index.metric == "cosine" else "Euclidean distance"
    if args.json:
        atomic_write_json({"index": str(Path(args.index).resolve()), "root": str(root), "k": args.k,
                           "distance": metric, "model": describe(idx.model), "queries": results}, args.json)
    if args.html:
        from plm.search.report import search_page

        search_page(results, idx, root, title=f"plm search: {Path(args.index).name}",
                    subtitle=f"{len(results)} queries · top {args.k} of {idx.index.count} images · {idx.index.kind} "
                             f"index · distance = {metric} · {describe(idx.model)}",
                    query_label=lambda q: _query_label(q, root, idx.class_names)).write(args.html)
        print(f"wrote {args.html}")
    return 0
