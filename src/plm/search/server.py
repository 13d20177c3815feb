"""``plm serve``: browse and search an indexed collection in a web browser (standard library only).

Routes (all ``GET`` unless noted; nothing else is answered but 404):

==========================  ===================================================================
``/``                       the upload form and the collection's thumbnails (``?page=N``)
``/similar?id=I``           the nearest images of indexed image ``I`` with their distances
``POST /search``            the nearest images of an uploaded image (multipart field ``image``)
``/image/I``, ``/thumb/I``  indexed image ``I`` in full / as a JPEG thumbnail
``/api/similar?id=I``       the nearest images of ``I`` as JSON (``POST /search?format=json``: of an upload)
==========================  ===================================================================

Files are addressed by their id in the index, never by a path from the request, so only files
that are in the index can be served; each is joined onto the collection root with
:func:`plm.data.base.safe_join`, which refuses links that lead out of it. Every name is escaped,
pages carry a Content-Security-Policy without scripts, and uploads larger than the limit or that
are not decodable images get a clear 413 / 400 page. The server binds to 127.0.0.1 unless told
otherwise.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image, UnidentifiedImageError

from plm.data.base import ImageLoadError, UnsafePathError, open_image, safe_join
from plm.viz.html import Page, escape, image_data_uri

log = logging.getLogger(__name__)

#: what the pages may load: images from this server or data: URIs, inline styles, forms posted here
PAGE_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'"
#: the response header adds what a <meta> policy cannot say: no framing by other sites
SERVE_CSP = PAGE_CSP + "; frame-ancestors 'none'"
UPLOAD_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
MAX_UPLOAD_PIXELS = 40_000_000
PER_PAGE = 60
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
                 ".bmp": "image/bmp", ".webp": "image/webp", ".tif": "image/tiff", ".tiff": "image/tiff"}
SERVE_CSS = """
form{margin:12px 0;padding:10px;border:1px solid #ddd;background:#f8f8f8}
.pager{margin:12px 0}.pager a,.pager span{margin-right:10px}
.tile a.full{font-size:.9em}
.error{color:#a00;font-weight:bold}
"""


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line message for the user."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _thumbs: dict[int, bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._resolved_root = self.root.resolve()
        self._metric = "1 - cosine similarity" if self.index.index.metric == "cosine" else "Euclidean distance"

    # -- the collection ------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Images in the index."""
        return len(self.index.paths)

    def check_id(self, value: str) -> int:
        """An image id from a request, or a 404."""
        if not value.isdigit() or int(value) >= self.count:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no image {value!r} in this index (ids 0 to {self.count - 1})")
        return int(value)

    def file_of(self, i: int) -> Path:
        """The file of image ``i``, inside the root (a 404 when it is gone or leads out of it)."""
        try:
            path = safe_join(self.root, str(PurePosixPath(self.index.paths[i])), self._resolved_root)
        except UnsafePathError as err:
            raise RequestError(HTTPStatus.NOT_FOUND, f"image {i} lies outside the collection: {err}") from err
        if not path.is_file():
            raise RequestError(HTTPStatus.NOT_FOUND, f"image {i} ({self.index.paths[i]}) is no longer on disk")
        return path

    def thumbnail(self, i: int, side: int = 160) -> bytes:
        """A JPEG thumbnail of image ``i`` (cached)."""
        if i not in self._thumbs:
            try:
                img = open_image(self.file_of(i))
            except ImageLoadError as err:
                raise RequestError(HTTPStatus.NOT_FOUND, f"image {i} cannot be decoded: {err}") from err
            img.thumbnail((side, side))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
            if len(self._thumbs) > 4096:
                self._thumbs.clear()
            self._thumbs[i] = buf.getvalue()
        return self._thumbs[i]

    def label_of(self, i: int) -> Optional[str]:
        """Image ``i``'s class name, or ``None``."""
        y = int(self.index.labels[i])
        return None if y < 0 else self.index.class_names.get(y, str(y))

    # -- searching -----------------------------------------------------------------------------
    def _vector_of(self, i: int) -> np.ndarray:
        vi = self.index.index
        if vi.vectors is not None:
            return vi.vectors[i:i + 1]
        try:
            return np.asarray(vi._faiss_index.reconstruct(int(i)), np.float32)[None, :]
        except RuntimeError:  # an index without a direct map: embed the file again
            return self._embed_image(open_image(self.file_of(i)))

    def _embed_image(self, img: Image.Image) -> np.ndarray:
        if self.embed is None:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "this server was started without a model; "
                                                               "uploads are disabled")
        return np.asarray(self.embed(img), np.float32).reshape(1, -1)

    def _hits(self, vector: np.ndarray, exclude: Optional[int] = None) -> list[dict[str, Any]]:
        dist, ids = self.index.index.search(vector, min(self.k + (exclude is not None), self.count))
        hits = []
        for d, j in zip(dist[0], ids[0], strict=True):
            if j < 0 or int(j) == exclude:
                continue
            hits.append({"id": int(j), "path": self.index.paths[j], "distance": float(d),
                         "label": self.label_of(int(j))})
        return hits[:self.k]

    def similar(self, i: int) -> list[dict[str, Any]]:
        """The ``k`` nearest other images of image ``i``."""
        with self._lock:
            return self._hits(self._vector_of(i), exclude=i)

    def search_upload(self, data: bytes) -> tuple[Image.Image, list[dict[str, Any]]]:
        """(the decoded upload, its ``k`` nearest images).

        Raises:
            RequestError: not a decodable image of an accepted format, or too many pixels.
        """
        img = decode_upload(data)
        with self._lock:
            return img, self._hits(self._embed_image(img))

    # -- pages ---------------------------------------------------------------------------------
    def _page(self, subtitle: str) -> Page:
        return Page(self.title, subtitle, css=SERVE_CSS, csp=PAGE_CSP)

    def _upload_form(self) -> str:
        if self.embed is None:
            return "<p>Uploads are disabled (no model).</p>"
        return ('<form method="post" action="/search" enctype="multipart/form-data">'
                '<label>Search with an image of your own: <input type="file" name="image" accept="image/*"></label> '
                f'<button type="submit">Search</button> <span class="detail">(up to '
                f'{escape(_mb(self.max_upload_bytes))}; {escape(", ".join(UPLOAD_FORMATS))})</span></form>')

    def _tile(self, i: int, detail: str = "", mark: Optional[str] = None) -> str:
        cls = f"tile {mark}" if mark else "tile"
        path = escape(self.index.paths[i])
        return (f'<div class="{cls}"><a href="/similar?id={i}" title="find images like this one">'
                f'<img src="/thumb/{i}" alt="{path}" loading="lazy"></a><div>{path}</div>'
                f'<div class="detail">{escape(detail)}</div><a class="full" href="/image/{i}">full image</a></div>')

    def home_page(self, page: int = 0) -> str:
        """The upload form and one page of the collection."""
        pages = max(1, -(-self.count // PER_PAGE))
        page = min(max(page, 0), pages - 1)
        p = self._page(f"{self.count} images · click one to find similar images, or upload your own")
        sec = p.section("Search")
        sec.raw(self._upload_form())
        start = page * PER_PAGE
        tiles = "".join(self._tile(i, self.label_of(i) or "") for i in range(start, min(start + PER_PAGE, self.count)))
        nav = []
        if page > 0:
            nav.append(f'<a href="/?page={page - 1}">previous</a>')
        nav.append(f"<span>page {page + 1} of {pages}</span>")
        if page + 1 < pages:
            nav.append(f'<a href="/?page={page + 1}">next</a>')
        col = p.section("Collection")
        col.raw(f'<div class="row">{tiles}</div><div class="pager">{"".join(nav)}</div>')
        return p.render()

    def _results(self, p: Page, query_tile: str, hits: list[dict[str, Any]], query_label: Optional[str]) -> None:
        sec = p.section("Nearest images")
        sec.legend([("query", "query"), ("right", "same class as the query"), ("wrong", "another class"),
                    (None, "class unknown")])
        tiles = [query_tile]
        for r, h in enumerate(hits, 1):
            if query_label is None or h["label"] is None:
                mark = None
            else:
                mark = "right" if h["label"] == query_label else "wrong"
            detail = f"#{r} · d={h['distance']:.4f}" + (f" · {h['label']}" if h["label"] else "")
            tiles.append(self._tile(h["id"], detail, mark))
        sec.raw(f'<div class="row">{"".join(tiles)}</div>')
        sec.paragraph(f"distance = {self._metric}; click a result to search with it.")
        p.section("New search").raw(self._upload_form() + '<p><a href="/">back to the collection</a></p>')

    def similar_page(self, i: int) -> str:
        """The results page of image ``i``."""
        hits = self.similar(i)
        label = self.label_of(i)
        p = self._page(f"the {len(hits)} nearest of {self.count} images to {self.index.paths[i]}")
        self._results(p, self._tile(i, "query" + (f" · {label}" if label else ""), "query"), hits, label)
        return p.render()

    def upload_page(self, img: Image.Image, hits: list[dict[str, Any]], name: str) -> str:
        """The results page of an uploaded image."""
        p = self._page(f"the {len(hits)} nearest of {self.count} images to your upload {name}")
        query = (f'<div class="tile query"><img src="{image_data_uri(img, 128, "JPEG")}" alt="upload">'
                 f'<div>{escape(name)}</div><div class="detail">query (upload)</div></div>')
        self._results(p, query, hits, None)
        return p.render()

    def error_page(self, status: HTTPStatus, message: str) -> str:
        """A page with one clear line."""
        p = self._page(f"{status.value} {status.phrase}")
        p.section("Error").raw(f'<p class="error">{escape(message)}</p><p><a href="/">back to the collection</a></p>')
        return p.render()


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


def decode_upload(data: bytes) -> Image.Image:
    """An uploaded file as an RGB image.

    Raises:
        RequestError: empty, not an image, another format than :data:`UPLOAD_FORMATS`, truncated,
            or more than :data:`MAX_UPLOAD_PIXELS` pixels.
    """
    if not data:
        raise RequestError(HTTPStatus.BAD_REQUEST, "no image was uploaded (choose a file first)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in UPLOAD_FORMATS:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"uploads must be {', '.join(UPLOAD_FORMATS)} images; "
                                                           f"this one is {img.format}")
            if img.width * img.height > MAX_UPLOAD_PIXELS:
                raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                   f"the image has {img.width}x{img.height} pixels, more than the "
                                   f"{MAX_UPLOAD_PIXELS:,} accepted")
            img.load()
            return img.convert("RGB")
    except RequestError:
        raise
    except UnidentifiedImageError as err:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the upload is not an image plm can read "
                                                   f"({', '.join(UPLOAD_FORMATS)})") from err
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the upload cannot be decoded as an image (truncated or "
                                                   f"corrupt?): {err}") from err


def parse_multipart(content_type: str, body: bytes, field_name: str = "image") -> tuple[str, bytes]:
    """(file name, bytes) of the ``field_name`` part of a ``multipart/form-data`` body.

    Raises:
        RequestError: not multipart, or no such field.
    """
    if not content_type.lower().startswith("multipart/form-data"):
        raise RequestError(HTTPStatus.BAD_REQUEST, "uploads must be sent as multipart/form-data (the page's form)")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise RequestError(HTTPStatus.BAD_REQUEST, "the upload is not a valid multipart/form-data body")
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == field_name:
            payload = part.get_payload(decode=True)  # bytes, or None for a nested multipart part
            return str(part.get_filename() or "upload"), payload if isinstance(payload, bytes) else b""
    raise RequestError(HTTPStatus.BAD_REQUEST, f"the upload has no {field_name!r} file field")


def _handler(service: SearchService, limit: Optional[Callable[[], None]]) -> type:
    class Handler(BaseHTTPRequestHandler):
        server_version = "plm-serve"
        sys_version = ""
        timeout = 60

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), fmt % args)

        def _send(self, status: HTTPStatus, body: bytes, ctype: str, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", SERVE_CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Cache-Control", "max-age=300" if cache else "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _html(self, text: str, status: HTTPStatus = HTTPStatus.OK) -> None:
            self._send(status, text.encode("utf-8"), "text/html; charset=utf-8")

        def _json(self, obj: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
            self._send(status, (json.dumps(obj) + "\n").encode(), "application/json")

        def _fail(self, err: RequestError, as_json: bool) -> None:
            if as_json:
                self._json({"error": str(err)}, err.status)
            else:
                self._html(service.error_page(err.status, str(err)), err.status)

        def _done(self) -> None:
            if limit is not None:
                limit()

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            as_json = url.path.startswith("/api/")
            try:
                if url.path == "/":
                    page = query.get("page", ["0"])[0]
                    self._html(service.home_page(int(page) if page.isdigit() else 0))
                elif url.path in ("/similar", "/api/similar"):
                    i = service.check_id(query.get("id", [""])[0])
                    if as_json:
                        self._json({"query": {"id": i, "path": service.index.paths[i]}, "distance": service._metric,
                                    "results": service.similar(i)})
                    else:
                        self._html(service.similar_page(i))
                elif url.path.startswith("/thumb/"):
                    thumb = service.thumbnail(service.check_id(url.path[7:]))
                    self._send(HTTPStatus.OK, thumb, "image/jpeg", cache=True)
                elif url.path.startswith("/image/"):
                    path = service.file_of(service.check_id(url.path[7:]))
                    ctype = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
                    self._send(HTTPStatus.OK, path.read_bytes(), ctype, cache=True)
                else:
                    raise RequestError(HTTPStatus.NOT_FOUND, f"nothing at {url.path}")
            except RequestError as err:
                self._fail(err, as_json)
            finally:
                self._done()

        do_HEAD = do_GET

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            as_json = parse_qs(url.query).get("format", [""])[0] == "json"
            try:
                if url.path != "/search":
                    raise RequestError(HTTPStatus.NOT_FOUND, f"nothing to post to at {url.path}")
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    raise RequestError(HTTPStatus.LENGTH_REQUIRED, "uploads need a Content-Length")
                if int(length) > service.max_upload_bytes:
                    self.close_connection = True  # the body is never read
                    raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                       f"the upload ({_mb(int(length))}) is larger than the "
                                       f"{_mb(service.max_upload_bytes)} this server accepts "
                                       f"(plm serve --max-upload-mb)")
                body = self.rfile.read(int(length))
                name, data = parse_multipart(self.headers.get("Content-Type", ""), body)
                img, hits = service.search_upload(data)
                if as_json:
                    self._json({"query": {"upload": name}, "distance": service._metric, "results": hits})
                else:
                    self._html(service.upload_page(img, hits, name))
            except RequestError as err:
                self._fail(err, as_json)
            finally:
                self._done()

    return Handler


def make_server(service: SearchService, host: str = "127.0.0.1", port: int = 8765,
                max_requests: Optional[int] = None) -> ThreadingHTTPServer:
    """An HTTP server for ``service`` (not yet serving: call ``serve_forever``; port 0 picks a free one).

    Args:
        service: what to serve.
        host: the address to bind (127.0.0.1: this machine only).
        port: the TCP port.
        max_requests: stop serving after this many requests (tests); ``None`` = no limit.
    """
    server: Optional[ThreadingHTTPServer] = None
    count = [0]
    lock = threading.Lock()

    def limit() -> None:
        with lock:
            count[0] += 1
            if max_requests is not None and count[0] >= max_requests and server is not None:
                threading.Thread(target=server.shutdown, daemon=True).start()

    server = ThreadingHTTPServer((host, port), _handler(service, limit))
    server.daemon_threads = True
    return server
