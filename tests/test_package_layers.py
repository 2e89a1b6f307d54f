"""The package's layers: no two packages import each other in a loop, and the local runners sit on top.

Walks every ``from ... import`` in ``fedshield/`` (module level and inside functions alike), maps
it to the top-level package (or module) it names, and checks the resulting graph.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import fedshield

ROOT = Path(fedshield.__file__).parent
ENTRY_POINTS = {"cli", "__main__"}  # the only ones allowed to import the local runners


def package_of(path: Path, root: Path) -> tuple[str, list[str]]:
    """(top-level unit, the dotted package a relative import in this file starts from)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    unit = parts[1] if len(parts) > 1 and parts[1] != "__init__" else "fedshield"
    return unit, parts[:-1]


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """unit -> the other units it imports (a unit is a subpackage or a top-level module)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in root.rglob("*.py"):
        unit, package = package_of(path, root)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    full = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
                elif node.module and node.module.split(".")[0] == "fedshield":
                    full = node.module.split(".")
                else:
                    continue
                targets = [full[1]] if len(full) > 1 else [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[1] for a in node.names if a.name.startswith("fedshield.")]
            else:
                continue
            graph[unit].update(t for t in targets if t != unit)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary loop found by depth-first search (one representative per back edge)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_walker_sees_relative_and_absolute_imports(tmp_path):
    pkg = tmp_path / "fedshield"
    (pkg / "a").mkdir(parents=True)
    (pkg / "b").mkdir()
    (pkg / "a" / "x.py").write_text("from ..b.y import f\n")
    (pkg / "b" / "y.py").write_text("def f():\n    from fedshield.a import x\n")
    (pkg / "top.py").write_text("from . import a\n")
    graph = import_graph(pkg)
    assert graph["a"] == {"b"} and graph["b"] == {"a"} and graph["top"] == {"a"}
    assert cycles(graph) == [["a", "b", "a"]]


def test_no_package_imports_another_in_a_loop():
    assert cycles(import_graph()) == []


def test_nothing_below_the_local_runners_imports_them():
    importers = sorted(unit for unit, targets in import_graph().items() if "local" in targets)
    assert set(importers) <= ENTRY_POINTS, importers


def test_the_learning_core_imports_no_process_or_agent_code():
    assert not import_graph()["learning"] & {"silo_agent", "aggregator", "operator", "local", "unlearning", "cli"}


def test_no_test_module_imports_another():
    """Shared helpers live in tests/support and fixtures in conftest.py files; test modules import neither each other."""
    offenders = []
    for path in Path(__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[-1].startswith("test_")]
    assert offenders == []


def test_tests_mirror_the_package():
    """Every test directory (but the shared support, the e2e suite and benchmarks) is named after a part of fedshield."""
    units = {p.stem if p.is_file() else p.name for p in ROOT.iterdir() if not p.name.startswith("_")}
    dirs = {p.name for p in Path(__file__).parent.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert dirs - units <= {"support", "e2e", "benchmarks", "charts"}, sorted(dirs - units)


def test_every_package_directory_is_a_regular_package():
    """A folder without __init__.py is a namespace package: an installed wheel would leave it out."""
    missing = [str(d.relative_to(ROOT.parent)) for d in ROOT.rglob("*") if d.is_dir() and d.name != "__pycache__"
               and any(d.glob("*.py")) and not (d / "__init__.py").exists()]
    assert missing == []


def graph_table(graph: dict[str, set[str]]) -> str:
    rows = ["| unit | imports |", "| --- | --- |"]
    rows += [f"| `{unit}` | {', '.join(f'`{t}`' for t in sorted(graph[unit])) or '-'} |" for unit in sorted(graph)]
    return "\n".join(rows)


def test_the_documented_import_graph_is_the_codes():
    doc = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    documented = doc.split("<!-- import-graph:start -->\n", 1)[1].split("\n<!-- import-graph:end -->", 1)[0]
    assert documented == graph_table(import_graph()), "docs/architecture.md's import graph is stale; it should read:\n" + graph_table(import_graph())
