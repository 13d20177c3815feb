"""``plm duplicates``: exact copies (same bytes) and near copies (embeddings within a distance) in an index."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from plm.utils.args import positive_int

NAME = "duplicates"
HELP = "find duplicates in an indexed collection: exact copies by content hash, near copies by embedding distance"
DESCRIPTION = (HELP + ". Exact: files with the same bytes (SHA-256), whatever their names. Near: images whose "
               "embeddings lie within --threshold of each other (the index's distance, 1 - cosine for plm "
               "embeddings), joined into groups. The default threshold is measured: re-saved, resized, slightly "
               "cropped or brightened copies fall inside it, distinct images almost never (docs/search.md).")
EXAMPLE = "plm duplicates photos-index.npz --csv duplicates.csv --json duplicates.json"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from plm.evaluation.defaults import NEAR_DUPLICATE_DISTANCE as DEFAULT_THRESHOLD

    parser.add_argument("index", help="index file from plm index (.npz)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"largest distance of a near-duplicate pair (default {DEFAULT_THRESHOLD}, measured for "
                             f"plm embed's default model; 0 = exact copies only)")
    parser.add_argument("-k", type=positive_int, default=10, help="neighbours looked at per image (near groups)")
    parser.add_argument("--root", default=None, help="the indexed image folder at a new location")
    parser.add_argument("--csv", default=None, metavar="OUT", help="write the groups as CSV (group,kind,path,distance)")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the groups as JSON")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --csv / --json file that plm duplicates did not write")


def run(args: argparse.Namespace) -> int:
    from plm.commands._common import collection_root
    from plm.errors import UserError
    from plm.search import SearchIndex, describe
    from plm.search import duplicates as dup
    from plm.utils.paths import check_output_file, display_path

    if not 0 <= args.threshold <= 4:
        raise UserError(f"--threshold must be in [0, 4] (a distance), got {args.threshold}")
    if args.csv:
        check_output_file(args.csv, "--csv", [args.index], dup.DUPLICATES_CSV, args.force,
                          others=[("--json", args.json)])
    if args.json:
        check_output_file(args.json, "--json", [args.index], dup.DUPLICATES_JSON, args.force)
    idx = SearchIndex.load(args.index)
    root = collection_root(idx.root, args.root, "exact duplicates (file contents)")
    exact, unreadable = dup.exact_groups(root, idx.paths)
    if unreadable:
        log.warning("warning: %d indexed file(s) could not be read (left out of the exact groups), e.g. %s",
                    len(unreadable), ", ".join(display_path(p) for p in unreadable[:3]))
    near: list[dup.Group] = []
    if args.threshold > 0 and idx.index.count > 1:
        near, saturated = dup.near_groups(idx.index, args.threshold, args.k, exact)
        if saturated:
            log.warning("warning: %d image(s) have all %d neighbours looked at within the threshold: their groups "
                        "may hold more images (raise -k)", saturated, args.k)
    metric = "1 - cosine similarity" if idx.index.metric == "cosine" else "Euclidean distance"
    copies = sum(len(g.ids) for g in exact)
    print(f"{Path(args.index).name}: {idx.index.count} images of {root} ({describe(idx.model)})")
    print(f"exact duplicates: {len(exact)} group(s), {copies} files ({copies - len(exact)} redundant copies)")
    print(f"near duplicates (distance <= {args.threshold:g}, {metric}): {len(near)} group(s), "
          f"{sum(len(g.ids) for g in near)} images")
    for g in (exact + near)[:20]:
        more = "" if g.kind == "exact" else f" (nearest member within {max(g.distances):.4f})"
        print(f"  {g.kind}: " + ", ".join(display_path(idx.paths[i]) for i in g.ids[:6])
              + (f" … and {len(g.ids) - 6} more" if len(g.ids) > 6 else "") + more)
    if len(exact) + len(near) > 20:
        print(f"  … and {len(exact) + len(near) - 20} more group(s)" + ("" if args.csv or args.json else
                                                                        " (--csv / --json list them all)"))
    groups = exact + near
    if args.csv:
        dup.write_csv(args.csv, groups, idx.paths)
        print(f"wrote {args.csv}")
    if args.json:
        dup.write_json(args.json, groups, idx.paths, {"index": str(Path(args.index).resolve()), "root": str(root),
                                                      "threshold": args.threshold, "distance": metric, "k": args.k})
        print(f"wrote {args.json}")
    return 0
