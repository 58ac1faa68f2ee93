"""No decision in the scheduler is taken by reading another service's message text."""

from __future__ import annotations

import re
from pathlib import Path

SCHEDULER = Path(__file__).parents[3] / "services" / "scheduler"


def test_the_scheduler_matches_no_message_text() -> None:
    pattern = re.compile(r"LOST_PREFIXES|\"lost:\"|lease lost|executor shut down|startswith\(")
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(SCHEDULER.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) or '"UNAVAILABLE" in' in line
    ]
    assert found == []
