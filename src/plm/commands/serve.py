"""``plm serve``: a local web page to browse an indexed collection and search it by example."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from plm.commands._common import add_runtime_arguments

NAME = "serve"
HELP = "browse and search an index in the web browser: click an image or upload one to see the nearest images"
DESCRIPTION = (HELP + ". A small local web server (127.0.0.1 by default): it serves only the images that are in "
               "the index, embeds uploads with the index's own model, and refuses uploads that are too large or "
               "not images. POST /api/search takes a query vector as JSON ({\"vector\": [...], \"k\": N}). "
               "It answers only requests addressed to it by the names it is bound to (no DNS "
               "rebinding) and refuses uploads posted from other web sites. Stop it with Ctrl-C.")
EXAMPLE = "plm serve photos-index.npz --port 8765    # then open http://127.0.0.1:8765/"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", help="index file from plm index (.npz)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 127.0.0.1 = this machine only (0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (0 = any free port)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also answer requests addressed to this host name (e.g. this machine's DNS name with "
                             "--host 0.0.0.0); by default only 127.0.0.1, localhost, [::1] and the --host value "
                             "(any IP address when bound to all interfaces), against DNS rebinding")
    parser.add_argument("-k", type=int, default=12, help="results per query")
    parser.add_argument("--root", default=None, help="the indexed image folder at a new location")
    parser.add_argument("--checkpoint", default=None,
                        help="the index's checkpoint at a new location (it must be the same model)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted, in MB")
    parser.add_argument("--no-upload", action="store_true", help="browse only: do not load the model, refuse uploads")
    parser.add_argument("--max-requests", type=int, default=None, metavar="N",
                        help="stop after answering N requests (scripted use, tests); default: until Ctrl-C")
    add_runtime_arguments(parser, workers=False)


def _embedder(idx, args: argparse.Namespace):
    import torch

    from plm.commands._common import runtime_from_args
    from plm.models import build_transform
    from plm.search import model_from_identity
    from plm.utils.device import autocast

    runtime = runtime_from_args(args)
    model = model_from_identity(idx.model, checkpoint=args.checkpoint).to(runtime["device"]).eval()
    transform = build_transform(model.preprocess, train=False)

    @torch.no_grad()
    def embed(img):
        x = transform(img).unsqueeze(0).to(runtime["device"])
        with autocast(runtime["device"], runtime["amp"]):
            out = model(x)
        return out.float().cpu().numpy()[0]

    return embed


def run(args: argparse.Namespace) -> int:
    from plm.errors import UserError
    from plm.search import SearchIndex, describe
    from plm.search.server import SearchService, make_server

    if args.k < 1:
        raise UserError(f"-k must be >= 1, got {args.k}")
    if not 0 < args.max_upload_mb <= 1024:
        raise UserError(f"--max-upload-mb must be in (0, 1024], got {args.max_upload_mb}")
    if args.max_requests is not None and args.max_requests < 1:
        raise UserError(f"--max-requests must be >= 1, got {args.max_requests}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in [0, 65535], got {args.port}")
    idx = SearchIndex.load(args.index)
    root = Path(args.root) if args.root else Path(idx.root)
    if not root.is_dir():
        raise UserError(f"the indexed folder is missing: {root}; pass --root DIR to point at its new location")
    embed = None if args.no_upload else _embedder(idx, args)
    service = SearchService(idx, root, embed=embed, k=args.k, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                            title=f"plm serve: {Path(args.index).name}", model_name=describe(idx.model))
    try:
        server = make_server(service, args.host, args.port, max_requests=args.max_requests,
                             allow_hosts=args.allow_host)
    except OSError as err:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from err
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this machine can browse the collection", args.host)
    host, port = server.server_address[:2]
    if isinstance(host, bytes):  # only for Unix sockets; TCP gives a str
        host = host.decode()
    print(f"serving {len(idx.paths)} images of {root} ({describe(idx.model)}) on http://{host}:{port}/ "
          f"(Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0
