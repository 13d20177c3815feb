"""An explorable 2-D map of a collection's embeddings as one self-contained HTML page (``plm map``).

Each image is a dot at its 2-D position (t-SNE, or UMAP when installed); hovering (or focusing,
with the keyboard) a dot shows its thumbnail, path and class. Dots are coloured by class (the
first-level sub-folder) when there is one. Pure HTML and CSS: no script, thumbnails as ``data:``
URIs, every name escaped, under the same Content-Security-Policy as every plm page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np
from PIL import Image

from plm.viz._figure import PALETTE
from plm.viz.html import Page, escape, image_data_uri

MAP_CSS = """
.map{position:relative;width:900px;height:900px;max-width:100%;border:1px solid #ddd;background:#fcfcfc;margin:12px 0}
.pt{position:absolute;width:12px;height:12px;margin:-6px 0 0 -6px;border-radius:50%;outline:none}
.pt:hover,.pt:focus{z-index:10;box-shadow:0 0 0 2px #222}
.pt .tip{display:none;position:absolute;left:14px;top:-8px;background:#fff;border:1px solid #bbb;padding:4px;
width:140px;font-size:.75em;overflow-wrap:anywhere;box-shadow:0 2px 6px rgba(0,0,0,.25)}
.pt.flip .tip{left:auto;right:14px}.pt:hover .tip,.pt:focus .tip{display:block}
.pt .tip img{display:block;max-width:128px;max-height:128px;margin:0 auto 2px}
.keys{display:flex;flex-wrap:wrap;gap:12px;font-size:.9em}.keys .dot{display:inline-block;width:10px;height:10px;
border-radius:50%;margin-right:5px;vertical-align:middle}
"""
UNLABELLED = "#9a9a9a"


def group_names(paths: Sequence[str], labels: Sequence[int] | np.ndarray,
                class_names: dict[int, str]) -> Optional[list[str]]:
    """Each image's colour group: its class name, else its first sub-folder; ``None`` when there is neither."""
    if any(int(y) >= 0 for y in labels):
        return [class_names.get(int(y), str(int(y))) if int(y) >= 0 else "(no class)" for y in labels]
    folders = [p.split("/", 1)[0] if "/" in p else "(top folder)" for p in paths]
    return folders if len(set(folders)) > 1 else None


def map_page(coords: np.ndarray, paths: Sequence[str], groups: Optional[Sequence[str]],
             thumbnail: Callable[[int], Optional[Image.Image]], title: str, subtitle: str = "",
             thumb_side: int = 96) -> Page:
    """The map page.

    Args:
        coords: (N, 2) positions.
        paths: N captions (file paths).
        groups: N colour-group names, or ``None`` for one colour.
        thumbnail: row → image (``None`` when unreadable).
        title: page title.
        subtitle: line under the title.
        thumb_side: longest side of the hover thumbnails.

    Raises:
        ValueError: mismatched lengths.
    """
    xy = np.asarray(coords, dtype=np.float64)
    n = len(paths)
    if xy.shape != (n, 2) or (groups is not None and len(groups) != n):
        raise ValueError(f"need (N, 2) coordinates and N groups for N={n} paths, got {xy.shape} and "
                         f"{None if groups is None else len(groups)}")
    lo, hi = xy.min(0) if n else np.zeros(2), xy.max(0) if n else np.ones(2)
    pos = (xy - lo) / np.where(hi - lo > 0, hi - lo, 1.0) * 94 + 3  # percent, with a margin
    names = sorted(set(groups)) if groups is not None else []
    colour = {g: (UNLABELLED if g.startswith("(") else PALETTE[i % len(PALETTE)]) for i, g in enumerate(names)}
    dots = []
    for i in range(n):
        group = groups[i] if groups is not None else None
        img = thumbnail(i)
        if img is not None:
            pic = f'<img src="{image_data_uri(img, thumb_side, "JPEG")}" alt="">'
        else:
            pic = "<div>unreadable</div>"
        flip = " flip" if pos[i, 0] > 75 else ""
        label = f"<div>{escape(group)}</div>" if group is not None else ""
        dots.append(f'<div class="pt{flip}" tabindex="0" title="{escape(paths[i])}" style="left:{pos[i, 0]:.2f}%;'
                    f'top:{100 - pos[i, 1]:.2f}%;background:{colour.get(group or "", PALETTE[0])}">'
                    f'<div class="tip">{pic}<div>{escape(paths[i])}</div>{label}</div></div>')
    page = Page(title, subtitle, css=MAP_CSS)
    section = page.section("Map", "Hover over a dot (or tab to it) to see its image; "
                                  "nearby dots have similar embeddings.")
    if names:
        keys = "".join(f'<span><span class="dot" style="background:{colour[g]}"></span>{escape(g)}</span>'
                       for g in names)
        section.raw(f'<div class="keys">{keys}</div>')
    section.raw(f'<div class="map">{"".join(dots)}</div>')
    return page
