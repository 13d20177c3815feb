"""The project's documents describe the method in their own words: they point only at files of the
repository, and every relative link of a Markdown page reaches one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCUMENTS = [*PAGES, *sorted((ROOT / "configs").glob("*.yaml"))]
#: the team's working notes outside the repository, which users do not have
OUTSIDE = ("METHOD.md", "ENVIRONMENT.md", "STYLE.md", "../shared", "shared/")


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_documents_point_only_inside_the_repository(path: Path) -> None:
    text = path.read_text()
    assert not [name for name in OUTSIDE if name in text], path


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_reach_a_file(page: Path) -> None:
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    missing = [t for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")
               and not (page.parent / t.split("#")[0]).exists()]
    assert not missing, missing
