"""The HTML pages of ``plm serve``: the collection with the upload form, results, errors.

Every user string is escaped (:func:`plm.viz.html.escape`) and every page carries a
Content-Security-Policy without scripts (:data:`PAGE_CSP`).
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Optional, Protocol

import numpy as np
from PIL import Image

from plm.search.images import UPLOAD_FORMATS, megabytes
from plm.viz.html import Page, escape, image_data_uri

__all__ = ["PAGE_CSP", "PER_PAGE", "Collection", "Pages"]

#: what the pages may load: images from this server or data: URIs, inline styles, forms posted here
PAGE_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'"
#: thumbnails on one page of the collection
PER_PAGE = 60
SERVE_CSS = """
form{margin:12px 0;padding:10px;border:1px solid #ddd;background:#f8f8f8}
.pager{margin:12px 0}.pager a,.pager span{margin-right:10px}
.tile a.full{font-size:.9em}
.error{color:#a00;font-weight:bold}
"""


class Collection(Protocol):
    """What the pages read from the service (:class:`plm.search.server.SearchService`)."""

    index: Any
    title: str
    embed: Optional[Callable[[Image.Image], np.ndarray]]
    max_upload_bytes: int
    distance_name: str

    @property
    def count(self) -> int: ...

    def label_of(self, i: int) -> Optional[str]: ...

    def similar(self, i: int) -> list[dict[str, Any]]: ...


class Pages:
    """The pages of a collection's service (which answers the searches they show)."""

    def __init__(self, service: Collection) -> None:
        self.service = service

    def _page(self, subtitle: str) -> Page:
        return Page(self.service.title, subtitle, css=SERVE_CSS, csp=PAGE_CSP)

    def _upload_form(self) -> str:
        if self.service.embed is None:
            return "<p>Uploads are disabled (no model).</p>"
        return ('<form method="post" action="/search" enctype="multipart/form-data">'
                '<label>Search with an image of your own: <input type="file" name="image" accept="image/*"></label> '
                f'<button type="submit">Search</button> <span class="detail">(up to '
                f'{escape(megabytes(self.service.max_upload_bytes))}; {escape(", ".join(UPLOAD_FORMATS))})'
                '</span></form>')

    def _tile(self, i: int, detail: str = "", mark: Optional[str] = None) -> str:
        cls = f"tile {mark}" if mark else "tile"
        path = escape(self.service.index.paths[i])
        return (f'<div class="{cls}"><a href="/similar?id={i}" title="find images like this one">'
                f'<img src="/thumb/{i}" alt="{path}" loading="lazy"></a><div>{path}</div>'
                f'<div class="detail">{escape(detail)}</div><a class="full" href="/image/{i}">full image</a></div>')

    def home(self, page: int = 0) -> str:
        """The upload form and one page of the collection."""
        pages = max(1, -(-self.service.count // PER_PAGE))
        page = min(max(page, 0), pages - 1)
        p = self._page(f"{self.service.count} images · click one to find similar images, or upload your own")
        sec = p.section("Search")
        sec.raw(self._upload_form())
        start = page * PER_PAGE
        tiles = "".join(self._tile(i, self.service.label_of(i) or "")
                        for i in range(start, min(start + PER_PAGE, self.service.count)))
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
        sec.paragraph(f"distance = {self.service.distance_name}; click a result to search with it.")
        p.section("New search").raw(self._upload_form() + '<p><a href="/">back to the collection</a></p>')

    def similar(self, i: int) -> str:
        """The results page of image ``i``."""
        hits = self.service.similar(i)
        label = self.service.label_of(i)
        p = self._page(f"the {len(hits)} nearest of {self.service.count} images to {self.service.index.paths[i]}")
        self._results(p, self._tile(i, "query" + (f" · {label}" if label else ""), "query"), hits, label)
        return p.render()

    def upload(self, img: Image.Image, hits: list[dict[str, Any]], name: str) -> str:
        """The results page of an uploaded image."""
        p = self._page(f"the {len(hits)} nearest of {self.service.count} images to your upload {name}")
        query = (f'<div class="tile query"><img src="{image_data_uri(img, 128, "JPEG")}" alt="upload">'
                 f'<div>{escape(name)}</div><div class="detail">query (upload)</div></div>')
        self._results(p, query, hits, None)
        return p.render()

    def error(self, status: HTTPStatus, message: str) -> str:
        """A page with one clear line."""
        p = self._page(f"{status.value} {status.phrase}")
        p.section("Error").raw(f'<p class="error">{escape(message)}</p><p><a href="/">back to the collection</a></p>')
        return p.render()
