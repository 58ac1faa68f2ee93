"""Numbered, durable events per key (a run, a job), with group commit and live following.

``append`` numbers an event and queues it; a flusher commits queued events in one SQLite
transaction every ``flush_ms`` (one fsync per group, not per event). An event the log's
``urgent`` says others act on (a state change, GPUs given back) is committed at once, with
whatever is queued: followers see it without waiting out the interval. Readers only ever see
committed events, so after a crash no sequence number is reused or skipped, and a consumer
that reconnects with the last number it saw gets no gap and no duplicate.

The newest committed events of the keys written last stay in memory, ``TAIL_WEIGHT`` in all
(an event weighs what ``weight`` says: a batch of metrics its length): a live follower
reads them from there, not back from SQLite.

An event may hold several numbers (``append(..., span=n)``: a batch of n metrics stored as
one row). Its own ``sequence`` is the last of them, so "the events after N" are those with
a sequence above N, and the first of them may start at or before N: its reader drops what
it has seen.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import itertools
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Generic, TypeVar

import aiosqlite
from pydantic import BaseModel

from arc_common.batch import Batcher

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=BaseModel)

TAIL_WEIGHT = 20_000


def _one(_: BaseModel) -> int:
    return 1


def _never(_: BaseModel) -> bool:
    return False


def _sequence(event: BaseModel) -> int:
    return int(getattr(event, "sequence"))  # noqa: B009 - every event model has one


class EventLog(Generic[E]):
    """Events of type ``model`` keyed by its ``key_field`` (e.g. ``run_id``) in ``table``.

    ``on_commit`` runs after each group is committed (e.g. to mirror state changes to a
    JSON-lines file) with the events of that group.
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        *,
        model: type[E],
        table: str,
        key_field: str,
        flush_ms: int = 20,
        on_commit: Callable[[list[E]], Awaitable[None]] | None = None,
        weight: Callable[[E], int] = _one,
        span: Callable[[E], int] = _one,
        urgent: Callable[[E], bool] = _never,
    ) -> None:
        self._db = db
        self._model = model
        self._table = table
        self._key_field = key_field
        self._on_commit = on_commit
        self._batches: Batcher[E] = Batcher.on_loop(
            self._commit, name="event-flusher", max_delay=flush_ms / 1000, requeue_failed=True
        )
        self._next: dict[str, int] = {}
        self._committed: dict[str, int] = {}
        self._closed: set[str] = set()
        self._changed = asyncio.Condition()
        # key -> its newest committed events, without gaps; the least recently written
        # key goes first when there are too many. Events are frozen: shared safely.
        self._tails: OrderedDict[str, deque[E]] = OrderedDict()
        self._weight = weight
        self._span = span
        self._tail_weight = 0
        self._urgent = urgent

    async def open(self) -> None:
        await self._db.execute(
            f"CREATE TABLE IF NOT EXISTS {self._table} (key TEXT NOT NULL, "
            "sequence INTEGER NOT NULL, event TEXT NOT NULL, PRIMARY KEY (key, sequence)) "
            "WITHOUT ROWID"
        )
        await self._db.commit()
        async with self._db.execute(
            f"SELECT key, MAX(sequence) FROM {self._table} GROUP BY key"
        ) as cursor:
            async for key, last in cursor:
                self._next[key] = int(last) + 1
                self._committed[key] = int(last)

    async def close(self) -> None:
        await self.flush()

    def _key(self, event: E) -> str:
        return str(getattr(event, self._key_field))

    def append(self, key: str, *, span: int = 1, **payload: object) -> E:
        """Number an event and queue it. ``span`` is how many numbers it holds (what the
        log's ``span`` gives for it); the event's sequence is the last of them."""
        sequence = self._next.get(key, 1) + span - 1
        self._next[key] = sequence + 1
        event = self._model.model_validate(
            {"sequence": sequence, self._key_field: key, "time": datetime.now(UTC), **payload}
        )
        self._batches.add(event)
        if self._urgent(event):  # others act on it: commit it now, with what is queued
            self._batches.hurry()
        return event

    def last_sequence(self, key: str) -> int:
        return self._next.get(key, 1) - 1

    async def mark_closed(self, key: str) -> None:
        """No more events will come for this run: followers stop after the last one."""
        await self.flush()
        self._closed.add(key)
        async with self._changed:
            self._changed.notify_all()

    async def flush(self) -> None:
        """Commit what is queued now; raise if that commit failed (the events stay queued
        and go with the next one)."""
        await self._batches.flush()

    async def _commit(self, batch: list[E]) -> None:
        try:
            await self._db.executemany(
                f"INSERT INTO {self._table} (key, sequence, event) VALUES (?, ?, ?)",
                [(self._key(e), _sequence(e), e.model_dump_json()) for e in batch],
            )
            await self._db.commit()
        except BaseException:
            await self._db.rollback()  # the group goes again whole, with the next one
            raise
        for event in batch:
            key = self._key(event)
            self._committed[key] = max(self._committed.get(key, 0), _sequence(event))
            self._keep(key, event)
        if self._on_commit is not None:
            try:
                await self._on_commit(batch)
            except Exception:
                logger.exception("event commit hook failed")
        async with self._changed:
            self._changed.notify_all()

    def _keep(self, key: str, event: E) -> None:
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tails[key] = deque()
        else:
            self._tails.move_to_end(key)
            if tail and _sequence(tail[-1]) + self._span(event) != _sequence(event):
                self._drop(key, len(tail))  # never a gap inside a tail
                tail = self._tails[key] = deque()
        tail.append(event)
        self._tail_weight += self._weight(event)
        while self._tail_weight > TAIL_WEIGHT:  # oldest events of the stalest key first
            self._drop(next(iter(self._tails)), 1)

    def _drop(self, key: str, count: int) -> None:
        tail = self._tails[key]
        for _ in range(count):
            self._tail_weight -= self._weight(tail.popleft())
        if not tail:
            del self._tails[key]

    def _from_tail(self, key: str, after: int, limit: int) -> list[E] | None:
        """The committed events after ``after`` from memory, or None when the tail does not
        reach back that far."""
        tail = self._tails.get(key)
        if not tail:
            return None
        first = tail[0]
        if after + 1 < _sequence(first) - self._span(first) + 1:
            return None
        start = bisect.bisect_right(tail, after, key=_sequence)
        return list(itertools.islice(tail, start, start + limit))

    async def read(self, key: str, after: int, limit: int = 500) -> list[E]:
        recent = self._from_tail(key, after, limit)
        if recent is not None:
            return recent
        async with self._db.execute(
            f"SELECT event FROM {self._table} WHERE key = ? AND sequence > ? "
            "ORDER BY sequence LIMIT ?",
            (key, after, limit),
        ) as cursor:
            return [self._model.model_validate_json(row[0]) async for row in cursor]

    async def read_last(self, key: str) -> E | None:
        """The newest committed event of ``key``."""
        async with self._db.execute(
            f"SELECT event FROM {self._table} WHERE key = ? ORDER BY sequence DESC LIMIT 1",
            (key,),
        ) as cursor:
            row = await cursor.fetchone()
        return self._model.model_validate_json(row[0]) if row else None

    def _has_news(self, key: str, seen: int) -> bool:
        return self._committed.get(key, 0) > seen or key in self._closed

    async def follow(
        self, key: str, after: int, *, is_finished: Callable[[], bool]
    ) -> AsyncIterator[E]:
        """Events after ``after`` from the store, then live ones as they commit."""
        async for batch in self.follow_batches(key, after, is_finished=is_finished):
            for event in batch:
                yield event

    async def follow_batches(
        self, key: str, after: int, *, is_finished: Callable[[], bool], limit: int = 500
    ) -> AsyncIterator[list[E]]:
        """``follow`` a read at a time: each list holds what was committed since the last
        one (at most ``limit``), in sequence order."""
        last = after
        while True:
            events = await self.read(key, last, limit)
            if events:
                yield events
                last = _sequence(events[-1])
                continue
            # Done once every event numbered so far was seen: one still queued, or in a
            # group on its way to the disk, is not committed yet but will come.
            if (key in self._closed or is_finished()) and self.last_sequence(key) <= last:
                return
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(functools.partial(self._has_news, key, last)),
                        timeout=1.0,
                    )
