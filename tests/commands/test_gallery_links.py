"""The plm search --html gallery links each thumbnail to its full image and explains its colours."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from helpers.shapes import make_shapes_folder
from plm.cli import main

pytest.importorskip("faiss")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.legend = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "div" and a.get("class") == "legend":
            self.legend = True


def test_thumbnails_link_to_full_images_and_a_legend_explains_borders(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    make_shapes_folder(root, per_class=3)
    odd = root / "circles" / "a b#c?.png"
    (root / "circles" / "circle_000.png").rename(odd)
    model = ["--backbone", "efficientnet_lite0", "--image-size", "32"]
    assert main(["embed", str(root), *model, "--out", str(tmp_path / "e.npz"), "--quiet"]) == 0
    assert main(["index", str(tmp_path / "e.npz"), "--out", str(tmp_path / "i.npz")]) == 0
    page = tmp_path / "g.html"
    assert main(["search", str(tmp_path / "i.npz"), str(odd), "-k", "4", "--html", str(page),
                 "--no-exclude-self"]) == 0  # keep the query among its results: its link is checked too
    text = page.read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(text)
    assert parser.legend and "result of the query&#x27;s class" in text and "result of another class" in text
    assert len(parser.links) == 5  # the query and its 4 results
    files = [Path(unquote(urlsplit(h).path)) for h in parser.links]
    assert all(h.startswith("file:///") for h in parser.links)
    assert all(f.is_file() and f.resolve().is_relative_to(root.resolve()) for f in files)
    assert files[0] == odd.resolve() and files[1] == odd.resolve()  # the query, then itself as the top result
