"""Every job state change mirrored to ``scheduler_events.jsonl`` for people and tools."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from arc_common.models import JobEvent

MIRROR_FILE = "scheduler_events.jsonl"


def _line(event: JobEvent) -> str:
    change = event.state_change
    assert change is not None
    return json.dumps(
        {
            "time": event.time.isoformat() if event.time else "",
            "job_id": event.job_id,
            "sequence": event.sequence,
            "previous_state": change.previous_state,
            "state": change.state,
            "attempt": change.attempt,
            "reason": change.reason,
        }
    )


def _append(path: Path, lines: list[str]) -> None:
    with path.open("a") as handle:
        handle.write("\n".join(lines) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


async def write_jsonl(home: Path, events: list[JobEvent]) -> None:
    """The state changes among ``events`` (one committed group), with one fsync."""
    lines = [_line(e) for e in events if e.state_change is not None]
    if lines:
        await asyncio.to_thread(_append, home / MIRROR_FILE, lines)
