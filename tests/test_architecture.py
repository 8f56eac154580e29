"""The import graph: no cycles anywhere, and import-linter's contracts really bite.

The graph is read from the sources with `ast`, so imports under TYPE_CHECKING and
inside functions count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_database  # the contract, the sources, key parsing: no server

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("kiln", "handlers", "models")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project's modules that `module` imports, wherever the import statement is."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(m for a in node.names if (m := owner(a.name)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if (m := owner(target if target in known else base)) is not None:
                    found.add(m)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    known = _modules()
    return {module: _imported(module, path, known) for module, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read_from_every_kind_of_import() -> None:
    graph = import_graph()
    assert "kiln.store.db" in graph["models.base"]
    assert "kiln.drivers.base" in graph["kiln.drivers.local"]  # from-import of a submodule
    assert "kiln.background.worker" in graph["kiln.cli"]  # imported inside a function


def test_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle_in_kiln_handlers_or_models() -> None:
    assert cycles(import_graph()) == []


def test_tables_import_nothing_of_kiln_but_the_database() -> None:
    graph = import_graph()
    reached = {m for name, deps in graph.items() if name.startswith("models") for m in deps}
    assert {m for m in reached if not m.startswith("models")} == {"kiln.store.db"}


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("kiln/background/worker.py", "import kiln.http.hal", "kiln/ points one way"),
        ("kiln/domain/access.py", "import kiln.http.auth", "kiln/ points one way"),
        ("kiln/drivers/local.py", "import kiln.store.db", "Drivers know only"),
        ("handlers/meta.py", "import kiln.background.queue", "Handlers never reach"),
    ],
)
def test_import_linter_refuses_a_back_edge(
    tmp_path: Path, module: str, bad_import: str, contract: str
) -> None:
    tree = tmp_path / "repo"
    for name in (*PACKAGES, "pyproject.toml"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tree / name)
    target = tree / module
    target.write_text(target.read_text() + f"\n{bad_import}  # noqa\n")
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0, result.stdout
    assert f"{contract}" in result.stdout
    assert "BROKEN" in result.stdout
