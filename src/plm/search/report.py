"""The ``plm search --html`` gallery: each query with its results as thumbnails, all text escaped.

Each thumbnail links to its full image (a ``file:`` URI of the file on this machine); a legend
explains the border colours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from plm.data.base import ImageLoadError, UnsafePathError, open_image, safe_join
from plm.viz.html import Page, Tile


def _thumb(path: Path) -> Any:
    try:
        return open_image(path)
    except (ImageLoadError, OSError):
        return None


def _file_uri(path: Path) -> Optional[str]:
    try:
        return path.resolve().as_uri()
    except (OSError, ValueError):
        return None


LEGEND = [("query", "query image"), ("right", "result of the query's class"),
          ("wrong", "result of another class"), (None, "class unknown (the query is not in a class sub-folder)")]


def search_page(results: Sequence[dict[str, Any]], idx: Any, root: Path, title: str, subtitle: str = "",
                query_label: Optional[Callable[[str], Optional[int]]] = None) -> Page:
    """A :class:`~plm.viz.html.Page` with one gallery row per query.

    Args:
        results: ``[{"query": PATH, "results": [{"rank", "path", "distance", "label"}]}]``.
        idx: the :class:`~plm.search.SearchIndex` (labels, class names).
        root: folder the result paths are relative to.
        title: page title.
        subtitle: line under the title.
        query_label: query path → label id when known; results then get right/wrong borders.
    """
    page = Page(title, subtitle)
    section = page.section("Results")
    section.legend(LEGEND)
    section.paragraph("Click a thumbnail to open the full image.")
    label_of = {p: int(y) for p, y in zip(idx.paths, idx.labels, strict=True)}
    for item in results:
        q = item["query"]
        qy = query_label(q) if query_label else None
        query_detail = "query" + (f" · {idx.class_names.get(qy, qy)}" if qy is not None else "")
        tiles = [Tile(_thumb(Path(q)), caption=q, detail=query_detail, mark="query", href=_file_uri(Path(q)))]
        for hit in item["results"]:
            try:
                full = safe_join(root, str(PurePosixPath(hit["path"])))
                image, href = _thumb(full), _file_uri(full)
            except UnsafePathError:
                image = href = None
            if qy is None or label_of.get(hit["path"], -1) < 0:
                mark = None
            else:
                mark = "right" if label_of[hit["path"]] == qy else "wrong"
            detail = f"#{hit['rank']} · d={hit['distance']:.4f}" + (f" · {hit['label']}" if hit.get("label") else "")
            tiles.append(Tile(image, caption=hit["path"], detail=detail, mark=mark, href=href))
        section.gallery_row(tiles, heading=f"query: {q}")
    return page
