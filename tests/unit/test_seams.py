"""The seams between packages, checked on the source: module sizes, what clients may
import, and that no service decides by matching another's message text."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 450
PACKAGES = [
    "arc_common",
    "services/gpu_manager",
    "services/scheduler",
    "services/executor",
    "services/governance",
]
# The reason strings services once matched with startswith, instead of a typed cause.
OLD_PREFIXES = {"lost:", "lease lost", "executor shut down", "pruned"}


def sources(*folders: str) -> Iterator[Path]:
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "gen" not in path.relative_to(ROOT).parts:
                yield path


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def strings(node: ast.AST) -> set[str]:
    """The string constants of a constant or a tuple, list or set of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return {s for item in node.elts for s in strings(item)}
    return set()


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_over_the_line_limit(package: str) -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in sources(package)
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules over {MAX_LINES} lines"


def test_clients_import_nothing_from_services() -> None:
    offending = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if m == "services" or m.startswith("services.")
        )
        for path in sources("clients")
    }
    assert {path: mods for path, mods in offending.items() if mods} == {}


def test_the_demo_and_what_it_shares_do_not_import_the_cli() -> None:
    # cli.py runs the demo (``arc demo``); the demo must not need the cli back (no cycle).
    for name in ("demo.py", "display.py"):
        modules = imported_modules(ROOT / "clients" / name)
        assert not {m for m in modules if m == "clients.cli" or m.startswith("clients.cli.")}


def test_no_service_decides_by_matching_a_reason_prefix() -> None:
    found = []
    for path in sources("services", "arc_common"):
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.Name) and node.id == "LOST_PREFIXES":
                found.append(f"{where(path, node)} LOST_PREFIXES")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "startswith"
                and node.args
            ):
                matched = {
                    s for s in strings(node.args[0]) if any(s.startswith(p) for p in OLD_PREFIXES)
                }
                if matched:
                    found.append(f"{where(path, node)} startswith {sorted(matched)}")
    assert found == []


def test_no_status_is_read_by_searching_its_text() -> None:
    found = []
    for path in sources("services", "arc_common", "clients"):
        for node in ast.walk(tree(path)):
            if (
                isinstance(node, ast.Compare)
                and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops)
                and strings(node.left)
                and "status" in ast.unparse(node.comparators[0])
            ):
                found.append(f"{where(path, node)} {ast.unparse(node)}")
    assert found == []


def test_governance_denials_are_told_apart_by_kind_not_by_text() -> None:
    decisions = ROOT / "arc_common" / "decisions.py"
    texts = {
        s
        for node in ast.walk(tree(decisions))
        if isinstance(node, ast.Constant)
        for s in strings(node)
    }
    assert not any("GPU-hour budget" in text for text in texts)
    found = []
    for path in sources("services", "arc_common"):
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.Tuple | ast.List | ast.Set) and "must be finite" in strings(
                node
            ):
                found.append(where(path, node))
    assert found == [], "a collection of violation texts to match against"
