"""The package's import graph, read with ``ast`` (no module is imported): shared by
tests/test_imports.py (cycles, test fixtures) and tests/test_layout.py (the layers' direction).

Imports at any depth count, the lazy ones inside functions too. ``runtime_only`` leaves out the
ones under ``if TYPE_CHECKING:``, which only name types.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("drpo_bench", "baselines")


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the project's packages (a package by its __init__.py)."""
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, name: str, known: dict[str, Path], runtime_only: bool = False) -> set[str]:
    """Project modules that ``path`` imports (``from x import y`` counts y when y is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if runtime_only and isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


def graph(runtime_only: bool = False, known: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    known = modules() if known is None else known
    return {name: imports(path, name, known, runtime_only) for name, path in known.items()}
