"""The scheduler's core knows no gRPC and reads no other service's message text."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SCHEDULER = Path(__file__).parents[3] / "services" / "scheduler"
# The edges: they alone speak protos and gRPC.
EDGES = {"__main__.py", "redaction.py", "remote.py", "servicer.py", "sweep_servicer.py"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_core_imports_no_grpc_nor_generated_code() -> None:
    wire = re.compile(r"^(grpc|google\.protobuf|arc\.)")
    found = {
        path.name: sorted(m for m in imports(path) if wire.match(m))
        for path in sorted(SCHEDULER.glob("*.py"))
        if path.name not in EDGES
    }
    assert {name: mods for name, mods in found.items() if mods} == {}


def test_the_scheduler_matches_no_message_text() -> None:
    pattern = re.compile(r"LOST_PREFIXES|\"lost:\"|lease lost|executor shut down|startswith\(")
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(SCHEDULER.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) or '"UNAVAILABLE" in' in line
    ]
    assert found == []
