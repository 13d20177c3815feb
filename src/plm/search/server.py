"""``plm serve``: browse and search an indexed collection in a web browser (standard library only).

Routes (all ``GET`` unless noted; nothing else is answered but 404):

==========================  ===================================================================
``/``                       the upload form and the collection's thumbnails (``?page=N``)
``/similar?id=I``           the nearest images of indexed image ``I`` with their distances
``POST /search``            the nearest images of an uploaded image (multipart field ``image``)
``/image/I``, ``/thumb/I``  indexed image ``I`` in full / as a JPEG thumbnail
``/api/similar?id=I``       the nearest images of ``I`` as JSON (``POST /search?format=json``: of an upload)
``POST /api/search``        the nearest images of a query vector, as JSON: body ``{"vector": [D numbers],
                            "k": optional}`` (``application/json``; embedded elsewhere with the index's model)
==========================  ===================================================================

Files are addressed by their id in the index, never by a path from the request, so only files
that are in the index can be served; each is joined onto the collection root with
:func:`plm.data.base.safe_join`, which refuses links that lead out of it. Every name is escaped,
pages carry a Content-Security-Policy without scripts, and uploads larger than the limit or that
are not decodable images get a clear 413 / 400 page. The server binds to 127.0.0.1 unless told
otherwise.

Other web pages cannot use it through the browser (:class:`~plm.search.hosts.HostPolicy`): a request is answered
only when its ``Host`` header names the server as it was bound (``127.0.0.1:PORT``,
``localhost:PORT``, ``[::1]:PORT``, the ``--host`` value, ``--allow-host`` names; any IP address
when bound to all interfaces), so a DNS-rebinding page gets a 400; a ``POST`` whose ``Origin`` is
another site, or that the browser marks ``Sec-Fetch-Site: cross-site`` / ``same-site``, gets a 403.

Memory stays bounded however many requests arrive at once: at most :data:`DECODE_SLOTS` images
are decoded at a time (thumbnails and uploads), a thumbnail is decoded once however many requests
ask for it at the same moment (the others wait for it), JPEG thumbnails are decoded at a reduced
scale, and no image of more than :data:`~plm.search.images.MAX_IMAGE_PIXELS` pixels (after that reduction) is
decoded. Full images are streamed from disk. Numbers in a request are ASCII digits of bounded
length, an upload's multipart body is read one level deep, and any other failure is a 500 page
with one line, never a dropped connection.

The parts: :mod:`plm.search.request` (numbers and uploads in a request), :mod:`plm.search.images`
(decoding within limits), :mod:`plm.search.hosts` (the host policy), :mod:`plm.search.pages` (the
HTML); this module is the service that answers the searches and the HTTP handler.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from plm.data.base import ImageLoadError, UnsafePathError, open_image, safe_join
from plm.search.hosts import HostPolicy
from plm.search.images import decode_upload, megabytes, thumbnail_jpeg
from plm.search.pages import PAGE_CSP, Pages
from plm.search.request import RequestError, header_params, parse_multipart, parse_number, shown
from plm.utils.paths import display_path

log = logging.getLogger(__name__)

#: the response header adds what a <meta> policy cannot say: no framing by other sites
SERVE_CSP = PAGE_CSP + "; frame-ancestors 'none'"
#: images decoded at the same time (thumbnails and uploads); further requests wait their turn
DECODE_SLOTS = 2
#: thumbnails kept in memory (about 5 KB each)
MAX_CACHED_THUMBS = 4096
#: the most results a vector query may ask for
MAX_K = 1000
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
                 ".bmp": "image/bmp", ".webp": "image/webp", ".tif": "image/tiff", ".tiff": "image/tiff"}


@dataclass
class _Flight:
    """One thumbnail being decoded; requests for the same image wait for it instead of decoding again."""

    done: threading.Event = field(default_factory=threading.Event)
    result: Optional[bytes] = None
    error: Optional[RequestError] = None


@dataclass
class SearchService:
    """What the server answers with: the index, its images, and a way to embed an uploaded image.

    Args:
        index: the :class:`~plm.search.SearchIndex`.
        root: the folder the index's paths are relative to.
        embed: PIL image → (D,) query vector (the index's model); ``None`` disables uploads.
        k: results per query.
        max_upload_bytes: the largest upload accepted.
        title: page title.
    """

    index: Any
    root: Path
    embed: Optional[Callable[[Image.Image], np.ndarray]] = None
    k: int = 12
    max_upload_bytes: int = 10 * 1024 * 1024
    title: str = "plm serve"
    model_name: str = "the index's model"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _thumbs: dict[int, bytes] = field(default_factory=dict, repr=False)
    _thumbs_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _flights: dict[int, _Flight] = field(default_factory=dict, repr=False)
    _decode_slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(DECODE_SLOTS),
                                                      repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._resolved_root = self.root.resolve()
        self.distance_name = "1 - cosine similarity" if self.index.index.metric == "cosine" else "Euclidean distance"

    # -- the collection ------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Images in the index."""
        return len(self.index.paths)

    def check_id(self, value: Optional[str]) -> int:
        """An image id from a request (ASCII digits), or a 404."""
        i = parse_number(value)
        if i is None or i >= self.count:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no image {shown(value or '')} in this index "
                                                     f"(ids 0 to {self.count - 1})")
        return i

    def file_of(self, i: int) -> Path:
        """The file of image ``i``, inside the root (a 404 when it is gone or leads out of it)."""
        try:
            path = safe_join(self.root, str(PurePosixPath(self.index.paths[i])), self._resolved_root)
        except UnsafePathError as err:
            raise RequestError(HTTPStatus.NOT_FOUND, f"image {i} cannot be served: {err}") from err
        if not path.is_file():
            raise RequestError(HTTPStatus.NOT_FOUND, f"image {i} ({display_path(self.index.paths[i])}) is no "
                                                     f"longer on disk")
        return path

    def thumbnail(self, i: int, side: int = 160) -> bytes:
        """A JPEG thumbnail of image ``i`` (cached; decoded once however many requests ask at once)."""
        with self._thumbs_lock:
            cached = self._thumbs.get(i)
            if cached is not None:
                return cached
            flight = self._flights.get(i)
            leader = flight is None
            if flight is None:
                flight = self._flights[i] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.result is None:
                raise flight.error or RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"image {i}: no thumbnail")
            return flight.result
        try:
            with self._decode_slots:
                flight.result = thumbnail_jpeg(self.file_of(i), side, f"image {i}")
            with self._thumbs_lock:
                if len(self._thumbs) >= MAX_CACHED_THUMBS:
                    self._thumbs.clear()
                self._thumbs[i] = flight.result
            return flight.result
        except Exception as err:
            flight.error = err if isinstance(err, RequestError) else RequestError(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"image {i}: the thumbnail failed ({type(err).__name__}: {err})")
            raise flight.error from err
        finally:
            with self._thumbs_lock:
                self._flights.pop(i, None)
            flight.done.set()

    def label_of(self, i: int) -> Optional[str]:
        """Image ``i``'s class name, or ``None``."""
        y = int(self.index.labels[i])
        return None if y < 0 else self.index.class_names.get(y, str(y))

    # -- searching -----------------------------------------------------------------------------
    def _vector_of(self, i: int) -> np.ndarray:
        try:
            return self.index.index.vector(i)
        except RuntimeError:  # an index that cannot give its vectors back: embed the file again
            if self.embed is None:
                raise RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"this index cannot give back the vector of "
                                                                     f"image {i}, and the server has no model to "
                                                                     f"embed it again (--no-upload)") from None
            with self._decode_slots:
                try:
                    img = open_image(self.file_of(i))
                except ImageLoadError as err:
                    raise RequestError(HTTPStatus.NOT_FOUND, f"image {i} cannot be decoded: {err}") from None
                return self._embed_image(img)

    def _model(self) -> Callable[[Image.Image], np.ndarray]:
        if self.embed is None:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "this server was started without a model; "
                                                               "uploads are disabled")
        return self.embed

    def _embed_image(self, img: Image.Image) -> np.ndarray:
        return np.asarray(self._model()(img), np.float32).reshape(1, -1)

    def _hits(self, vector: np.ndarray, exclude: Optional[int] = None, k: Optional[int] = None) -> list[dict[str, Any]]:
        dist, ids = self.index.index.search(vector, k or self.k, exclude=None if exclude is None else [exclude])
        return [{"id": int(j), "path": self.index.paths[j], "distance": float(d), "label": self.label_of(int(j))}
                for d, j in zip(dist[0], ids[0], strict=True) if j >= 0]

    def similar(self, i: int) -> list[dict[str, Any]]:
        """The ``k`` nearest other images of image ``i``."""
        with self._lock:
            return self._hits(self._vector_of(i), exclude=i)

    def search_vector(self, body: bytes) -> list[dict[str, Any]]:
        """The nearest images of the query vector in a JSON body ``{"vector": [...], "k": N}`` (``k`` optional,
        1 to :data:`MAX_K`; the server's ``k`` by default).

        Raises:
            RequestError: not JSON, no ``vector`` list of the index's dimension, a value that is not a finite
                number, an all-zero vector, or a bad ``k`` (400).
        """
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"the body is not JSON ({type(err).__name__}); send "
                                                       f'{{"vector": [...], "k": N}}') from None
        vector = data.get("vector") if isinstance(data, dict) else None
        dim = self.index.index.dim
        if not isinstance(vector, list) or len(vector) != dim:
            raise RequestError(HTTPStatus.BAD_REQUEST, f'"vector" must be a list of {dim} numbers (this index holds '
                                                       f"{dim}-d vectors, made by {self.model_name})")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vector):
            raise RequestError(HTTPStatus.BAD_REQUEST, '"vector" must hold numbers only')
        x = np.asarray(vector, dtype=np.float64)
        if not np.isfinite(x).all() or not np.isfinite(x.astype(np.float32)).all() or not x.any():
            raise RequestError(HTTPStatus.BAD_REQUEST, '"vector" must be finite float32 values, not all zero')
        k = data.get("k", self.k)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise RequestError(HTTPStatus.BAD_REQUEST, f'"k" must be an integer from 1 to {MAX_K}')
        with self._lock:
            return self._hits(x.astype(np.float32).reshape(1, -1), k=k)

    def search_upload(self, data: bytes) -> tuple[Image.Image, list[dict[str, Any]]]:
        """(the decoded upload, its ``k`` nearest images).

        Raises:
            RequestError: not a decodable image of an accepted format, or too many pixels.
        """
        self._model()  # refused before any decoding when there is none
        with self._decode_slots:
            img = decode_upload(data)
            vector = self._embed_image(img)
        with self._lock:
            return img, self._hits(vector)

class _PolicyHandler(BaseHTTPRequestHandler):
    """A request handler that knows the server's :class:`HostPolicy` (set once the port is known)."""

    policy: Optional[HostPolicy] = None


def _handler(service: SearchService, limit: Optional[Callable[[], None]]) -> type[_PolicyHandler]:
    pages = Pages(service)

    class Handler(_PolicyHandler):
        server_version = "plm-serve"
        sys_version = ""
        timeout = 60

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), fmt % args)

        def _headers(self, status: HTTPStatus, ctype: str, length: int, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(length))
            self.send_header("Content-Security-Policy", SERVE_CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Cache-Control", "max-age=300" if cache else "no-store")
            self.end_headers()

        def _send(self, status: HTTPStatus, body: bytes, ctype: str, cache: bool = False) -> None:
            self._headers(status, ctype, len(body), cache)
            if self.command != "HEAD":
                self.wfile.write(body)

        def _send_file(self, path: Path) -> None:
            """Stream a file (never read whole into memory)."""
            try:
                fh = open(path, "rb")
                size = path.stat().st_size
            except (OSError, ValueError) as err:
                raise RequestError(HTTPStatus.NOT_FOUND, f"{display_path(path.name)} cannot be read: {err}") from err
            with fh:
                self._headers(HTTPStatus.OK, CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream"), size,
                              cache=True)
                if self.command != "HEAD":
                    shutil.copyfileobj(fh, self.wfile, 1 << 20)

        def _html(self, text: str, status: HTTPStatus = HTTPStatus.OK) -> None:
            self._send(status, text.encode("utf-8"), "text/html; charset=utf-8")

        def _json(self, obj: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
            self._send(status, (json.dumps(obj) + "\n").encode(), "application/json")

        def _fail(self, err: RequestError, as_json: bool) -> None:
            if as_json:
                self._json({"error": str(err)}, err.status)
            else:
                self._html(pages.error(err.status, str(err)), err.status)

        def _answer(self, route: Callable[[], None], as_json: bool) -> None:
            """Run a route; every failure becomes a one-line error page, never a dropped connection."""
            try:
                self._check_host()
                route()
            except RequestError as err:
                self._fail(err, as_json)
            except (BrokenPipeError, ConnectionResetError):  # the client went away: nobody to answer
                self.close_connection = True
            except Exception as err:  # one line to the user, the traceback to the debug log
                log.debug("%s %s failed", self.command, self.path, exc_info=True)
                self.close_connection = True
                try:
                    self._fail(RequestError(HTTPStatus.INTERNAL_SERVER_ERROR,
                                            f"the server could not answer this request ({type(err).__name__}: "
                                            f"{str(err)[:200]})"), as_json)
                except OSError:
                    pass
            finally:
                if limit is not None:
                    limit()

        def _check_host(self) -> None:
            policy = self.policy
            if policy is not None and not policy.allows_host(self.headers.get("Host")):
                self.close_connection = True
                raise RequestError(HTTPStatus.BAD_REQUEST,
                                   f"this server answers only requests addressed to {policy.describe()} "
                                   f"(this one names host {shown(self.headers.get('Host') or '')}); to reach it under "
                                   f"another name, start it with --allow-host NAME")

        def _check_same_origin(self) -> None:
            site = (self.headers.get("Sec-Fetch-Site") or "").strip().lower()
            origin = self.headers.get("Origin")
            policy = self.policy
            if site in ("cross-site", "same-site") or (
                    origin is not None and policy is not None and not policy.allows_origin(origin)):
                raise RequestError(HTTPStatus.FORBIDDEN, "uploads from other web sites are refused; use this "
                                                         "server's own page")

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            self._answer(lambda: self._get(url), url.path.startswith("/api/"))

        do_HEAD = do_GET

        def _get(self, url: Any) -> None:
            query = parse_qs(url.query)
            as_json = url.path.startswith("/api/")
            if url.path == "/":
                page = parse_number(query.get("page", ["0"])[0])
                if page is None:
                    raise RequestError(HTTPStatus.BAD_REQUEST, "?page= must be a page number (0, 1, 2 …)")
                self._html(pages.home(page))
            elif url.path in ("/similar", "/api/similar"):
                i = service.check_id(query.get("id", [""])[0])
                if as_json:
                    self._json({"query": {"id": i, "path": service.index.paths[i]}, "distance": service.distance_name,
                                "results": service.similar(i)})
                else:
                    self._html(pages.similar(i))
            elif url.path.startswith("/thumb/"):
                thumb = service.thumbnail(service.check_id(url.path[7:]))
                self._send(HTTPStatus.OK, thumb, "image/jpeg", cache=True)
            elif url.path.startswith("/image/"):
                self._send_file(service.file_of(service.check_id(url.path[7:])))
            else:
                raise RequestError(HTTPStatus.NOT_FOUND, f"nothing at {shown(url.path)}")

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            as_json = url.path.startswith("/api/") or parse_qs(url.query).get("format", [""])[0] == "json"
            self._answer(lambda: self._post(url), as_json)

        def _post(self, url: Any) -> None:
            as_json = url.path.startswith("/api/") or parse_qs(url.query).get("format", [""])[0] == "json"
            if url.path not in ("/search", "/api/search"):
                raise RequestError(HTTPStatus.NOT_FOUND, f"nothing to post to at {shown(url.path)}")
            self._check_same_origin()
            length = parse_number(self.headers.get("Content-Length"))
            if length is None:
                self.close_connection = True  # the body is never read
                raise RequestError(HTTPStatus.LENGTH_REQUIRED, "uploads need a Content-Length (a number of bytes)")
            if length > service.max_upload_bytes:
                self.close_connection = True  # the body is never read
                raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                   f"the upload ({megabytes(length)}) is larger than the "
                                   f"{megabytes(service.max_upload_bytes)} this server accepts "
                                   f"(plm serve --max-upload-mb)")
            body = self.rfile.read(length)
            if url.path == "/api/search":
                ctype = header_params("Content-Type", self.headers.get("Content-Type", "")).get_content_type()
                if ctype != "application/json":
                    raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "a vector query is sent as "
                                                                         "application/json: {\"vector\": [...]}")
                self._json({"query": {"vector": True}, "distance": service.distance_name,
                            "results": service.search_vector(body)})
                return
            name, data = parse_multipart(self.headers.get("Content-Type", ""), body)
            img, hits = service.search_upload(data)
            if as_json:
                self._json({"query": {"upload": name}, "distance": service.distance_name, "results": hits})
            else:
                self._html(pages.upload(img, hits, name))

    return Handler


def make_server(service: SearchService, host: str = "127.0.0.1", port: int = 8765,
                max_requests: Optional[int] = None, allow_hosts: Iterable[str] = ()) -> ThreadingHTTPServer:
    """An HTTP server for ``service`` (not yet serving: call ``serve_forever``; port 0 picks a free one).

    Args:
        service: what to serve.
        host: the address to bind (127.0.0.1: this machine only).
        port: the TCP port.
        max_requests: stop serving after this many requests (tests); ``None`` = no limit.
        allow_hosts: more host names the ``Host`` header may give (see :class:`HostPolicy`).
    """
    server: Optional[ThreadingHTTPServer] = None
    count = [0]
    lock = threading.Lock()

    def limit() -> None:
        with lock:
            count[0] += 1
            if max_requests is not None and count[0] >= max_requests and server is not None:
                threading.Thread(target=server.shutdown, daemon=True).start()

    handler = _handler(service, limit)
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    handler.policy = HostPolicy.for_bind(host, server.server_address[1], allow_hosts)
    return server
