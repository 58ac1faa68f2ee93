"""Numbered, durable events per run, with group commit and live following.

``append`` numbers an event and queues it; a flusher commits queued events in one SQLite
transaction every ``flush_ms`` (one fsync per group, not per event). Readers only ever see
committed events, so after a crash no sequence number is reused or skipped, and a consumer
that reconnects with the last number it saw gets no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import aiosqlite

from arc_common.models import RunEvent

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS run_events (
    run_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (run_id, sequence)
) WITHOUT ROWID;
"""


class EventLog:
    def __init__(self, db: aiosqlite.Connection, *, flush_ms: int = 20) -> None:
        self._db = db
        self._flush_seconds = flush_ms / 1000
        self._queue: list[RunEvent] = []
        self._next: dict[str, int] = {}
        self._committed: dict[str, int] = {}
        self._closed_runs: set[str] = set()
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self._db.executescript(SCHEMA)
        await self._db.commit()
        async with self._db.execute(
            "SELECT run_id, MAX(sequence) FROM run_events GROUP BY run_id"
        ) as cursor:
            async for run_id, last in cursor:
                self._next[run_id] = int(last) + 1
                self._committed[run_id] = int(last)
        self._task = asyncio.create_task(self._flusher(), name="event-flusher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    def append(self, run_id: str, **payload: object) -> RunEvent:
        sequence = self._next.get(run_id, 1)
        self._next[run_id] = sequence + 1
        event = RunEvent.model_validate(
            {"sequence": sequence, "run_id": run_id, "time": datetime.now(UTC), **payload}
        )
        self._queue.append(event)
        self._wake.set()
        return event

    def last_sequence(self, run_id: str) -> int:
        return self._next.get(run_id, 1) - 1

    async def mark_closed(self, run_id: str) -> None:
        """No more events will come for this run: followers stop after the last one."""
        await self.flush()
        self._closed_runs.add(run_id)
        async with self._changed:
            self._changed.notify_all()

    async def flush(self) -> None:
        if not self._queue:
            return
        batch, self._queue = self._queue, []
        await self._db.executemany(
            "INSERT INTO run_events (run_id, sequence, event) VALUES (?, ?, ?)",
            [(e.run_id, e.sequence, e.model_dump_json()) for e in batch],
        )
        await self._db.commit()
        for event in batch:
            self._committed[event.run_id] = max(
                self._committed.get(event.run_id, 0), event.sequence
            )
        async with self._changed:
            self._changed.notify_all()

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._flush_seconds)
            try:
                await self.flush()
            except Exception:
                logger.exception("event flush failed; retrying")
                self._wake.set()

    async def read(self, run_id: str, after: int, limit: int = 500) -> list[RunEvent]:
        async with self._db.execute(
            "SELECT event FROM run_events WHERE run_id = ? AND sequence > ? "
            "ORDER BY sequence LIMIT ?",
            (run_id, after, limit),
        ) as cursor:
            return [RunEvent.model_validate_json(row[0]) async for row in cursor]

    def _has_news(self, run_id: str, seen: int) -> bool:
        return self._committed.get(run_id, 0) > seen or run_id in self._closed_runs

    async def follow(
        self, run_id: str, after: int, *, is_finished: Callable[[], bool]
    ) -> AsyncIterator[RunEvent]:
        """Events after ``after`` from the store, then live ones as they commit."""
        last = after
        while True:
            events = await self.read(run_id, last)
            for event in events:
                yield event
                last = event.sequence
            if events:
                continue
            if (
                (run_id in self._closed_runs or is_finished())
                and self._committed.get(run_id, 0) <= last
                and not any(e.run_id == run_id for e in self._queue)
            ):
                return
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(functools.partial(self._has_news, run_id, last)),
                        timeout=1.0,
                    )
