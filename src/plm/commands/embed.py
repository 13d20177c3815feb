"""``plm embed``: embed every image of a folder into one ``.npz``, incrementally."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from plm.commands._common import add_model_arguments, model_from_args

NAME = "embed"
HELP = "embed every image under a folder (recursive) into an embeddings file; re-runs embed only new/changed files"
DESCRIPTION = (HELP + ". Unreadable files (zero-byte, truncated, not an image) are skipped and listed. The file "
               "records the model, so re-running with another model re-embeds everything. Several processes "
               "(torchrun --nproc_per_node=N -m plm embed ..., on one or more machines sharing the folder) each "
               "embed a share of the images; rank 0 writes the one file. Format: docs/search.md.")
EXAMPLE = "plm embed photos/ --out photos.npz --backbone efficientnet_lite0 --device auto --amp"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="image folder (class sub-folders become labels)")
    parser.add_argument("--out", required=True, help="embeddings file to write or update (.npz)")
    add_model_arguments(parser)
    parser.add_argument("--full", action="store_true", help="ignore an existing --out file and re-embed everything")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --out file that is not a plm embeddings file")


def _listing(items: list[str], limit: int = 20) -> str:
    from plm.utils.paths import display_path

    lines = [f"  {display_path(s)}" for s in items[:limit]]
    if len(items) > limit:
        lines.append(f"  … and {len(items) - limit} more")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from plm.commands._common import runtime_from_args
    from plm.errors import UserError
    from plm.search import EmbeddingStore, describe, embed_folder, model_identity

    runtime = runtime_from_args(args)
    folder, out = Path(args.folder), Path(args.out)
    if folder.is_file():
        raise UserError(f"{folder} is a file; plm embed takes a folder of images (and embeds every image under "
                        f"it): put the image in a folder, or search an index with it: plm search INDEX {folder}")
    if not folder.is_dir():
        raise UserError(f"image folder not found: {folder}")
    from plm.utils.paths import EMBEDDINGS, check_output_file

    check_output_file(out, "--out", inputs=[folder, args.checkpoint, args.weights], kind=EMBEDDINGS, force=args.force)
    previous = None
    if out.exists() and not args.full:
        try:
            previous = EmbeddingStore.load(out)
        except UserError as err:  # never overwrite a file that is not ours (unless --force)
            if args.force:
                previous = None
            else:
                raise UserError(f"--out {out} exists and is not a plm embeddings file; choose another --out or "
                                f"remove it ({err})") from err
    model = model_from_args(args)
    identity = model_identity(model, backbone=args.backbone, checkpoint=args.checkpoint, weights=args.weights)
    from plm.training.distributed import env_world_size, init_distributed

    ctx = init_distributed(str(runtime["device"])) if env_world_size() > 1 else None
    if ctx is not None and not ctx.is_main:  # only rank 0 talks and writes
        logging.getLogger().setLevel(logging.WARNING)
    finished = False
    try:
        store, stats = embed_folder(model, folder, identity, previous=previous, batch_size=args.batch_size,
                                    progress=not args.quiet, cache_dir=False if args.no_cache else None, ctx=ctx,
                                    **runtime)
        finished = True
    finally:
        if ctx is not None and ctx.enabled:
            from plm.training.distributed import shutdown_distributed

            shutdown_distributed(wait=finished)  # a failed rank must not wait for the others
    if ctx is not None and not ctx.is_main:
        return 0
    if ctx is not None:
        print(f"{ctx.world_size} processes embedded {stats.embedded} image(s) between them")
    if stats.reason:
        log.warning("re-embedding all images: %s", stats.reason)
    if len(store) == 0:
        raise UserError(f"none of the {stats.total} image files under {folder} could be read; nothing written")
    store.save(out)
    print(f"{out}: {len(store)} images, {store.dim}-d, {describe(identity)}")
    print(f"  embedded {stats.embedded} new or changed, reused {stats.reused}, dropped {stats.dropped} deleted, "
          f"skipped {stats.skipped} unreadable, ignored {len(stats.ignored)} non-image")
    if stats.cached_features:
        print(f"  {stats.cached_features} of the {stats.embedded} embedded took their backbone features from the "
              f"feature cache (computed before, e.g. by plm train): only the head ran for them")
    if store.skipped:
        print(f"skipped {len(store.skipped)} unreadable file(s):")
        print(_listing([f"{p}: {stats.skipped_reasons.get(p, 'unreadable (unchanged since an earlier run)')}"
                        for p in store.skipped]))
    if stats.ignored:
        print(f"ignored {len(stats.ignored)} file(s) without an image extension:")
        print(_listing(stats.ignored))
    return 0
