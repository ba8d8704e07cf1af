"""The layout holds: imports run one way (scenarios -> models -> activations -> probes -> experiments ->
organisms -> report, with the pipeline and the CLI above them all and the shared helpers below), no module import
circle (lazy imports inside functions included), the CLI imports only public names, and no file is long."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "afprobe"
RANK = {
    "_errors": 0,
    "_progress": 0,
    "_io": 0,
    "_lock": 0,
    "_stats": 0,
    "_device": 0,
    "config": 0,
    "scenarios": 1,
    "models": 2,
    "activations": 3,
    "probes": 4,
    "experiments": 5,
    "organisms": 6,
    "report": 7,
    "pipeline": 8,
    "cli": 9,
}
MAX_LINES = 450


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``afprobe...`` module this file imports, at any depth (module level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("afprobe")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("afprobe"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


FILES = sorted(SRC.rglob("*.py"))
MODULES = {_module(p) for p in FILES}
GRAPH = {_module(p): {m for m in _imports(p) if m in MODULES} for p in FILES}


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_run_one_way(path: Path) -> None:
    me = _module(path)
    if me == "afprobe":
        return
    mine = RANK[_area(me)]
    later = sorted(m for m in GRAPH[me] if _area(m) and RANK[_area(m)] > mine)
    assert not later, f"{me} imports from a later stage: {later}"


def test_no_import_circle() -> None:
    """Between modules of different files (a package's ``__init__`` re-exporting its own modules aside)."""
    edges = {
        m: {d for d in deps if d != m and not (m.count(".") == 1 and d.startswith(m + "."))}
        for m, deps in GRAPH.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join([*stack[stack.index(d) :], d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_the_cli_imports_public_names_only() -> None:
    for path in (SRC / "cli").glob("*.py"):
        private = [m for m in _imports(path) if any(p.startswith("_") for p in m.split(".")[1:])]
        # its own modules and the bottom layer (errors, writes, locks, progress) shared by every layer are fine
        private = [m for m in private if not m.startswith("afprobe.cli.") and RANK.get(m.split(".")[1]) != 0]
        assert not private, f"{path.name} imports private modules {private}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_long_file(path: Path) -> None:
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(SRC)} has {n} lines (a concept per file: split it)"
