"""``plm map``: a 2-D map of an embeddings file as a self-contained HTML page, thumbnails on hover."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from plm.utils.args import seed_int
from plm.utils.choices import MAP_METHODS

if TYPE_CHECKING:
    import numpy as np

NAME = "map"
HELP = "a 2-D map (t-SNE, or UMAP when installed) of a plm embed file as an HTML page with thumbnails on hover"
DESCRIPTION = (HELP + ". Dots are coloured by class (first-level sub-folder) when there is one. Large collections "
               "are drawn as a seeded random sample of --max-points images.")
EXAMPLE = "plm map photos.npz --html photos-map.html"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("embeddings", help="embeddings file from plm embed (.npz)")
    parser.add_argument("--html", required=True, metavar="OUT", help="HTML page to write")
    parser.add_argument("--method", default="auto", choices=["auto", *MAP_METHODS],
                        help="projection; auto = UMAP when umap-learn is installed, else t-SNE")
    parser.add_argument("--max-points", type=int, default=2000,
                        help="draw a seeded random sample of at most this many images")
    parser.add_argument("--thumb-size", type=int, default=96, help="longest side of the hover thumbnails (px)")
    parser.add_argument("--root", default=None, help="the embedded image folder at a new location (for thumbnails)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the sample and the projection")
    parser.add_argument("--force", action="store_true", help="replace an existing --html file that is not a plm page")


def _grid(n: int) -> np.ndarray:
    """Positions of ``n`` points on a square grid, row by row (for vectors that are all the same)."""
    import numpy as np

    side = int(np.ceil(np.sqrt(n)))
    i = np.arange(n)
    return np.stack([i % side, -(i // side)], axis=1).astype(np.float64)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from plm.commands._common import collection_root, load_searchable_store
    from plm.data.base import ImageLoadError, UnsafePathError, open_image, safe_join
    from plm.errors import UserError
    from plm.search import describe
    from plm.utils.paths import HTML, check_output_file
    from plm.viz.interactive_map import group_names, map_page
    from plm.viz.maps import project_2d

    if args.max_points < 1 or args.thumb_size < 8:
        raise UserError("--max-points must be >= 1 and --thumb-size >= 8")
    check_output_file(args.html, "--html", [args.embeddings, args.root], HTML, args.force)  # before the projection
    store = load_searchable_store(args.embeddings)
    method = args.method
    if method == "auto":
        try:
            import umap  # noqa: F401

            method = "umap"
        except ImportError:
            method = "tsne"
    n = len(store)
    rows = np.arange(n)
    if n > args.max_points:
        rows = np.sort(np.random.default_rng(args.seed).choice(n, size=args.max_points, replace=False))
        log.info("note: drawing %d of %d images (--max-points)", len(rows), n)
    try:
        coords = project_2d(store.vectors[rows], method, seed=args.seed)
    except ImportError as err:
        raise UserError(str(err)) from err
    shown = method if len(rows) >= 4 else "pca"
    if len(rows) > 1 and not np.ptp(coords, axis=0).any():
        log.info("note: all %d vectors are the same (identical images?): drawn side by side on a grid", len(rows))
        coords, shown = _grid(len(rows)), "identical vectors, side by side"
    root = collection_root(store.root, args.root, "the map's thumbnails")
    resolved = root.resolve()
    paths = [store.paths[i] for i in rows]

    def thumbnail(j: int):
        try:
            return open_image(safe_join(root, str(PurePosixPath(paths[j])), resolved))
        except (ImageLoadError, UnsafePathError, OSError):
            return None

    groups = group_names(paths, store.labels[rows], store.class_names)
    page = map_page(coords, paths, groups, thumbnail, title=f"plm map: {Path(args.embeddings).name}",
                    subtitle=f"{len(rows)} of {n} images · {shown} of {store.dim}-d embeddings · "
                             f"{describe(store.model)}",
                    thumb_side=args.thumb_size)
    page.write(args.html)
    print(f"wrote {args.html} ({len(rows)} images, {shown})")
    return 0
