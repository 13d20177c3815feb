"""The package's imports run down the layers of ``plm.LAYERS`` (read from the import graph, not by importing)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import plm

SRC = Path(plm.__file__).resolve().parent


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: Path, src: Path) -> str:
    name = _module_name(path, src)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _from_target(node: ast.ImportFrom, package: str) -> str:
    """The module a ``from … import`` names, relative imports resolved against ``package``."""
    if not node.level:
        return node.module or ""
    base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path, src: Path = SRC) -> list[tuple[str, int]]:
    """Every ``plm…`` module ``path`` imports (module level, in functions, under TYPE_CHECKING), with its line."""
    package = _package_of(path, src)
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((_from_target(node, package), node.lineno))
    return [(t, line) for t, line in out if t == "plm" or t.startswith("plm.")]


def layer_of(module: str) -> int | None:
    """The index in ``plm.LAYERS`` of ``module`` (``plm`` itself counts as the bottom), or None."""
    if module == "plm":
        return 0
    best = None
    for i, layer in enumerate(plm.LAYERS):
        for top in layer:
            if module == top or module.startswith(top + "."):
                best = i
    return best


def import_edges(src: Path = SRC) -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every plm → plm import in the package folder ``src``."""
    return [(_module_name(p, src), target, line)
            for p in sorted(src.rglob("*.py")) for target, line in _imports(p, src)]


def upward_edges(edges: list[tuple[str, str, int]]) -> list[str]:
    """Each edge whose target sits in a higher layer than its source, as ``a (L3) -> b (L6), line 12``."""
    bad = []
    for src, dst, line in edges:
        ls, ld = layer_of(src), layer_of(dst)
        if ls is not None and ld is not None and ld > ls:
            bad.append(f"{src} (L{ls}) -> {dst} (L{ld}), line {line}")
    return bad


def test_every_module_has_a_layer() -> None:
    missing = sorted({m for p in SRC.rglob("*.py") if layer_of(m := _module_name(p)) is None} - {"plm"})
    assert not missing, f"modules in no layer of plm.LAYERS (add their package there): {missing}"


def test_the_package_docstring_lists_the_layers() -> None:
    doc = plm.__doc__ or ""
    for i, layer in enumerate(plm.LAYERS):
        line = next((ln for ln in doc.splitlines() if ln.startswith(f"- L{i} ")), "")
        assert all(f"``{m}``" in line for m in layer), f"the docstring's L{i} line does not name {layer}"


def test_no_module_imports_a_higher_layer() -> None:
    edges = import_edges()
    assert len(edges) > 100  # the graph was read (function-level imports included)
    bad = upward_edges(edges)
    assert not bad, "imports that go up the layers:\n" + "\n".join(bad)


def test_the_check_names_an_upward_import(tmp_path: Path) -> None:
    pkg = tmp_path / "plm"
    (pkg / "search").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "search" / "__init__.py").write_text("")
    (pkg / "search" / "identity.py").write_text(
        "def f():\n    from plm.commands._common import model_from_args\n    from ..utils import io\n")
    edges = import_edges(pkg)
    assert upward_edges(edges) == ["plm.search.identity (L8) -> plm.commands._common (L9), line 2"]
    assert ("plm.search.identity", "plm.utils", 3) in edges  # relative imports resolved


@pytest.mark.parametrize("module,layer", [("plm.neighbors.exact", 1), ("plm.neighbors.candidates", 1),
                                          ("plm.cli", 9), ("plm.utils.tables", 0), ("plm.losses", 5)])
def test_layer_of(module: str, layer: int) -> None:
    assert layer_of(module) == layer


def test_the_nearest_neighbours_sit_on_the_ground_floor() -> None:
    """plm.neighbors (the one exact k-NN, every layer's) imports nothing of plm but the bottom layer."""
    edges = [(src, dst) for src, dst, _ in import_edges() if src.startswith("plm.neighbors")]
    assert edges and all(layer_of(dst) == 0 or dst.startswith("plm.neighbors") for _, dst in edges), edges
    users = {src.split(".")[1] for src, dst, _ in import_edges() if dst.startswith("plm.neighbors")}
    assert {"evaluation", "manifold", "losses", "estimators", "search"} <= users


def _top_level_imports(path: Path, src: Path = SRC) -> list[str]:
    """The ``plm…`` modules ``path`` imports when it is imported or type-checked: module level and
    ``if TYPE_CHECKING:`` blocks, not imports inside functions (which run later, on first use)."""
    package = _package_of(path, src)
    out: list[str] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(getattr(node, "orelse", []))
            elif isinstance(node, ast.Import):
                out.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                target = _from_target(node, package)
                out.append(target)
                out.extend(f"{target}.{alias.name}" for alias in node.names)  # a submodule imported by name

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)).body)
    return [t for t in out if t.startswith("plm")]


def import_cycles(src: Path = SRC) -> list[list[str]]:
    """The circles of the package's module-level and type-checking imports (strongly connected
    components of two or more modules), each sorted."""
    files = {_module_name(p, src): p for p in sorted(src.rglob("*.py"))}
    graph = {m: {t for t in _top_level_imports(p, src) if t in files and t != m} for m, p in files.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def test_no_import_circle() -> None:
    """Issue 25: config ↔ methods ↔ registry closed a circle through type-only imports; none is left."""
    assert import_cycles() == []


def test_the_circle_check_finds_a_type_only_circle(tmp_path: Path) -> None:
    pkg = tmp_path / "plm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from plm.b import B\n")
    (pkg / "b.py").write_text("from plm import a\n")
    (pkg / "c.py").write_text("def f():\n    from plm import a\n")  # a function-level import makes no circle
    assert import_cycles(pkg) == [["plm.a", "plm.b"]]
