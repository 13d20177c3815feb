"""Every ```python block of docs/api.md runs as printed (each in a fresh namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

API_MD = Path(__file__).resolve().parents[1] / "docs" / "api.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", API_MD.read_text(), flags=re.S | re.M)


def test_docs_have_the_examples() -> None:
    assert len(BLOCKS) >= 6
    text = "\n".join(BLOCKS)
    for name in ("PLMLoss", "init_proxies", "similarity_matrix", "retrieval_metrics", "VectorIndex"):
        assert name in text


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_api_docs_block_runs(index: int) -> None:
    code = BLOCKS[index]
    exec(compile(code, f"{API_MD}:block{index + 1}", "exec"), {"__name__": f"api_md_block_{index + 1}"})


def test_readme_links_the_api_docs() -> None:
    readme = (API_MD.parents[1] / "README.md").read_text()
    assert "docs/api.md" in readme
