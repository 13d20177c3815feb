"""Self-contained HTML pages: escaping, images as data URIs, and a small page builder.

Nothing a page shows is fetched from elsewhere: figures and thumbnails are embedded as
``data:`` URIs, styles are inline, and there is no JavaScript. Every string that reaches the
page goes through :func:`escape`, except what is passed to :meth:`Section.raw` (trusted HTML).
A Content-Security-Policy meta tag (:data:`CSP`) forbids scripts and any non-``data:`` image, as
a second line of defence.

Example::

    page = Page("plm demo")
    page.section("Training").figure(training_curves_png(history), caption="loss per epoch")
    page.section("Retrieval").table(["method", "R@1"], [["backbone", 0.91]])
    page.write("report.html")
"""

from __future__ import annotations

import base64
import html as _html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from PIL import Image

MARKS = ("query", "right", "wrong")
# Nothing may load or run: images only from data: URIs, inline styles only, no scripts at all.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1200px;color:#222;
padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}
h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.subtitle{color:#666;margin-top:0}figure{margin:12px 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}table{border-collapse:collapse;margin:12px 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;margin:10px 0 18px}
.row h3{width:100%;font-size:1em;margin:0 0 4px;overflow-wrap:anywhere}
.tile{width:140px;font-size:.78em;text-align:center;overflow-wrap:anywhere}
.tile img,.tile .missing{width:128px;height:128px;object-fit:contain;border:4px solid #ddd;background:#fafafa;
display:block;margin:0 auto 2px}
.tile .missing{display:flex;align-items:center;justify-content:center;color:#999}
.tile.query img{border-color:#1f77b4}.tile.right img{border-color:#2ca02c}.tile.wrong img{border-color:#d62728}
.detail{color:#666}
.tile a{text-decoration:none;color:inherit}
.legend{display:flex;flex-wrap:wrap;gap:16px;font-size:.9em;color:#444;margin:8px 0}
.legend .swatch{display:inline-block;width:12px;height:12px;border:4px solid #ddd;vertical-align:middle;
margin-right:6px}
.legend .query .swatch{border-color:#1f77b4}.legend .right .swatch{border-color:#2ca02c}
.legend .wrong .swatch{border-color:#d62728}
"""


def escape(value: Any) -> str:
    """``str(value)`` with ``& < > " '`` escaped: safe inside element text and quoted attributes.

    Bytes of file names that are not UTF-8 are shown as ``\\xNN`` (:func:`plm.utils.paths.display_path`).
    """
    from plm.utils.paths import display_path

    return _html.escape(display_path(str(value)), quote=True)


def png_data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,…`` URI for PNG bytes.

    Raises:
        ValueError: ``png`` does not start with the PNG signature.
    """
    if not bytes(png[:8]) == b"\x89PNG\r\n\x1a\n":
        raise ValueError("png_data_uri expects PNG bytes (e.g. from plm.viz figure helpers)")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_data_uri(image: Image.Image, max_side: int = 128, fmt: str = "PNG") -> str:
    """A thumbnail of ``image`` (longest side ≤ ``max_side``) as a ``data:`` URI (``PNG`` or ``JPEG``)."""
    fmt = fmt.upper()
    if fmt not in ("PNG", "JPEG"):
        raise ValueError(f"fmt must be 'PNG' or 'JPEG', got {fmt!r}")
    thumb = image.convert("RGB")
    thumb.thumbnail((max_side, max_side))
    if min(thumb.size) < 1:
        thumb = thumb.resize((max(1, thumb.width), max(1, thumb.height)))
    buf = io.BytesIO()
    thumb.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class Tile:
    """One thumbnail of a gallery row.

    Attributes:
        image: the picture (``None`` draws a "missing" placeholder).
        caption: first caption line (e.g. the file path), shown as text.
        detail: second, greyed line (e.g. ``"d=0.123 · cat"``).
        mark: ``"query"``, ``"right"``, ``"wrong"`` (border colour) or ``None``.
        href: where a click on the thumbnail leads (e.g. the full image's ``file:`` URI), or ``None``.
    """

    image: Optional[Image.Image]
    caption: str = ""
    detail: str = ""
    mark: Optional[str] = None
    href: Optional[str] = None

    def __post_init__(self) -> None:
        if self.mark is not None and self.mark not in MARKS:
            raise ValueError(f"mark must be one of {MARKS} or None, got {self.mark!r}")

    def render(self, max_side: int = 128) -> str:
        """The tile's HTML."""
        cls = f"tile {self.mark}" if self.mark else "tile"
        alt = escape(self.caption or "image")
        pic = (f'<img src="{image_data_uri(self.image, max_side)}" alt="{alt}">' if self.image is not None
               else '<div class="missing">missing</div>')
        if self.href:
            pic = f'<a href="{escape(self.href)}" title="open the full image">{pic}</a>'
        mark = f'<div class="detail">{escape(self.mark)}</div>' if self.mark in ("right", "wrong") else ""
        return (f'<div class="{cls}">{pic}<div>{escape(self.caption)}</div>'
                f'<div class="detail">{escape(self.detail)}</div>{mark}</div>')


@dataclass
class Section:
    """A titled part of a :class:`Page`; its methods append blocks and return the section."""

    title: str
    blocks: list[str] = field(default_factory=list)

    def paragraph(self, text: str) -> Section:
        """A paragraph of plain text (escaped)."""
        self.blocks.append(f"<p>{escape(text)}</p>")
        return self

    def figure(self, png: bytes, caption: str = "", alt: str = "", width: Optional[int] = None) -> Section:
        """An embedded PNG figure (e.g. from :func:`plm.viz.embedding_map_png`) with a caption."""
        style = f' style="width:{int(width)}px"' if width else ""
        cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
        alt_text = escape(alt or caption or self.title)
        self.blocks.append(f'<figure><img src="{png_data_uri(png)}" alt="{alt_text}"{style}>{cap}</figure>')
        return self

    def table(self, headers: Sequence[Any], rows: Sequence[Sequence[Any]], caption: str = "",
              float_format: str = "{:.4f}") -> Section:
        """A table; floats are formatted with ``float_format``, ``None`` shows as ``-``."""

        def cell(v: Any) -> str:
            if v is None:
                return "-"
            return float_format.format(v) if isinstance(v, float) else str(v)

        head = "".join(f"<th>{escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{escape(cell(v))}</td>" for v in row) + "</tr>" for row in rows)
        cap = f"<caption>{escape(caption)}</caption>" if caption else ""
        self.blocks.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def gallery_row(self, tiles: Sequence[Tile], heading: str = "", max_side: int = 128) -> Section:
        """A row of thumbnails (a query and its results) under an optional heading."""
        head = f"<h3>{escape(heading)}</h3>" if heading else ""
        self.blocks.append(f'<div class="row">{head}{"".join(t.render(max_side) for t in tiles)}</div>')
        return self

    def legend(self, items: Sequence[tuple[Optional[str], str]]) -> Section:
        """A row of border-colour swatches: ``(mark, meaning)`` pairs, ``mark`` one of :data:`MARKS` or ``None``."""
        for mark, _ in items:
            if mark is not None and mark not in MARKS:
                raise ValueError(f"mark must be one of {MARKS} or None, got {mark!r}")
        spans = "".join(f'<span class="{escape(mark or "neutral")}"><span class="swatch"></span>{escape(text)}</span>'
                        for mark, text in items)
        self.blocks.append(f'<div class="legend">{spans}</div>')
        return self

    def raw(self, trusted_html: str) -> Section:
        """Append HTML as is. Only for markup you built yourself: it is *not* escaped."""
        self.blocks.append(trusted_html)
        return self

    def render(self) -> str:
        """The section's HTML."""
        return f"<section><h2>{escape(self.title)}</h2>{''.join(self.blocks)}</section>"


@dataclass
class Page:
    """A self-contained HTML page: a title, an optional subtitle, and sections (``css``: extra trusted rules)."""

    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)
    css: str = ""
    csp: str = CSP

    def section(self, title: str, text: str = "") -> Section:
        """Append a new section (with an optional first paragraph) and return it."""
        sec = Section(title)
        if text:
            sec.paragraph(text)
        self.sections.append(sec)
        return sec

    def render(self) -> str:
        """The whole page as one HTML string."""
        sub = f'<p class="subtitle">{escape(self.subtitle)}</p>' if self.subtitle else ""
        body = "".join(s.render() for s in self.sections)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta http-equiv="Content-Security-Policy" content="{self.csp}">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<meta name="generator" content="plm">'
                f"<title>{escape(self.title)}</title><style>{_CSS}{self.css}</style></head>"
                f"<body><h1>{escape(self.title)}</h1>{sub}{body}</body></html>\n")

    def write(self, path: str | os.PathLike) -> Path:
        """Write the page atomically (UTF-8) and return its path."""
        from plm.utils.io import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(self.render().encode("utf-8"), path)
        return path
