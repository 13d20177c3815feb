"""The developer checks: CI lints and type-checks before the tests, and slow tests run by default."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SLOW_TEST = '''
import pytest


@pytest.mark.slow
def test_marked_slow():
    pass


def test_fast():
    pass
'''


def _ci_commands() -> list[str]:
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_ruff_and_mypy_after_the_install_and_before_the_tests() -> None:
    commands = _ci_commands()
    install = commands.index("scripts/install.sh --test")
    ruff = commands.index("ruff check src tests benchmarks scripts")
    mypy = commands.index("mypy")
    tests = commands.index("python3 -m pytest -q")
    assert install < ruff < tests and install < mypy < tests
    assert "set -euo pipefail" in commands  # a finding stops the run


def test_the_test_extra_installs_ruff_and_mypy() -> None:
    text = (REPO / "pyproject.toml").read_text()
    extra = text.split("\ntest = [", 1)[1].split("]", 1)[0]
    assert '"ruff==' in extra and '"mypy==' in extra


def _run_pytest(folder: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                           str(REPO / "pyproject.toml"), "--rootdir", str(folder), *args, str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_slow_tests_run_by_default_and_not_slow_leaves_them_out(tmp_path: Path) -> None:
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_marks.py").write_text(SLOW_TEST)
    assert _run_pytest(tmp_path).startswith("2 passed")
    summary = _run_pytest(tmp_path, "-m", "not slow")
    assert summary.startswith("1 passed") and "1 deselected" in summary


def test_tests_mirror_the_package_with_unique_module_names() -> None:
    tests = REPO / "tests"
    packages = {p.parent.name for p in (REPO / "src" / "plm").glob("*/__init__.py")}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name not in ("__pycache__", "helpers")}
    assert folders and folders <= packages, sorted(folders - packages)
    modules = [p.name for p in tests.rglob("test_*.py")]
    assert len(modules) == len(set(modules)), "test module basenames must stay unique (rootdir import mode)"
    # the shared helpers are one package (imported as helpers.…); test folders are not packages
    assert [p.relative_to(tests) for p in tests.rglob("__init__.py")] == [Path("helpers/__init__.py")]
    assert not list((tests / "helpers").glob("test_*.py")), "tests/helpers holds helpers, not tests"
