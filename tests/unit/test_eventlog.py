"""The event log: followers read the newest committed events from memory and everything
older from SQLite, identically; a follower of a finished key stops only after the events
still on their way to the disk."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from arc_common import eventlog, packed, sqlite
from arc_common.eventlog import EventLog
from arc_common.models import JobEvent, JobState, JobStateChange, MetricResult, metric_count


async def open_log(path: Path) -> EventLog[JobEvent]:
    log = EventLog(await sqlite.connect(path), model=JobEvent, table="events", key_field="job_id")
    await log.open()
    return log


def metric(step: int) -> dict[str, Any]:
    return {"metric": MetricResult(name="train_step_loss", value=1 / step, step=step)}


async def test_memory_and_disk_give_the_same_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(eventlog, "TAIL_WEIGHT", 12)  # the newest 12 events, all keys together
    log = await open_log(tmp_path / "events.sqlite3")
    for step in range(1, 21):
        log.append("a", **metric(step))
        log.append("b", **metric(step))
    await log.flush()
    cold = await open_log(tmp_path / "events.sqlite3")  # nothing in memory: all from disk
    for after in (0, 5, 12, 13, 19, 20):
        for key in ("a", "b"):
            assert await log.read(key, after, limit=4) == await cold.read(key, after, limit=4)
    assert log._tail_weight == 12 and set(log._tails) == {"a", "b"}
    recent = await log.read("a", 15)
    assert [e.sequence for e in recent] == [16, 17, 18, 19, 20]
    assert [e.sequence for e in await log.read("a", 0, limit=50)] == list(range(1, 21))
    for each in (log, cold):
        await each.close()
        await each._db.close()


async def test_a_finished_key_is_followed_to_the_events_still_being_committed(
    tmp_path: Path,
) -> None:
    log = await open_log(tmp_path / "events.sqlite3")
    log.append("job", **metric(1))
    await log.flush()  # the key has a tail in memory: the follower reads from there
    for step in range(2, 6):
        log.append("job", **metric(step))
    db = log._db
    real_commit = db.commit

    async def slow_commit() -> None:
        await asyncio.sleep(0.3)
        await real_commit()

    db.commit = slow_commit  # type: ignore[method-assign]
    flushing = asyncio.create_task(log.flush())
    await asyncio.sleep(0.05)  # the group has left the queue and is not committed yet
    seen = [e.sequence async for e in log.follow("job", 0, is_finished=lambda: True)]
    await flushing
    assert seen == [1, 2, 3, 4, 5]
    db.commit = real_commit  # type: ignore[method-assign]
    await log.close()
    await db.close()


async def test_the_tail_is_bounded_by_weight_and_serves_live_reads(tmp_path: Path) -> None:
    log = EventLog(
        await sqlite.connect(tmp_path / "events.sqlite3"),
        model=JobEvent,
        table="events",
        key_field="job_id",
        weight=lambda event: 5 if event.metric and event.metric.step % 2 else 1,
    )
    await log.open()
    for step in range(1, 4097):  # weighs far more than TAIL_WEIGHT
        log.append("old", **metric(step))
    await log.flush()
    assert log._tail_weight <= eventlog.TAIL_WEIGHT
    log.append("new", **metric(1))
    await log.flush()
    db = log._db

    def no_disk(*_: Any) -> Any:
        raise AssertionError("read from SQLite, not from memory")

    db.execute = no_disk  # type: ignore[method-assign]
    assert [e.sequence for e in await log.read("old", 4094)] == [4095, 4096]
    assert [e.sequence for e in await log.read("new", 0)] == [1]
    del db.execute  # the real method again
    assert [e.sequence for e in await log.read("old", 0, limit=3)] == [1, 2, 3]  # from disk
    await log.close()
    await db.close()


async def test_a_batch_holds_as_many_numbers_as_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 1..4 metrics between single events: each is one row numbered by its last
    metric; every read after any number, mid-batch included, gives the same events from
    memory and from disk, and a reopened log numbers on from the last metric."""
    monkeypatch.setattr(eventlog, "TAIL_WEIGHT", 15)  # part of the key from memory

    async def spanned(path: Path) -> EventLog[JobEvent]:
        log = EventLog(
            await sqlite.connect(path),
            model=JobEvent,
            table="events",
            key_field="job_id",
            weight=metric_count,
            span=metric_count,
        )
        await log.open()
        return log

    log = await spanned(tmp_path / "events.sqlite3")
    step = 0
    for size in (1, 3, 4, 2, 1, 4, 3, 2, 4):
        batch = [MetricResult(name="loss", value=1.0, step=step + i + 1) for i in range(size)]
        step += size
        event = log.append("job", span=size, metrics=packed.pack(batch))
        assert event.sequence == step  # numbered by its last metric
        log.append("other", **metric(step))  # another key's events do not share numbers
    await log.flush()
    assert log.last_sequence("job") == step == 24
    cold = await spanned(tmp_path / "events.sqlite3")
    assert 0 < len(log._tails["job"]) < 9  # the oldest batches only on disk
    for after in range(step + 1):
        warm_events = await log.read("job", after, limit=3)
        assert warm_events == await cold.read("job", after, limit=3)
        first = warm_events[0] if warm_events else None
        if first is not None:  # the first event holds the metric after ``after``
            assert first.sequence - metric_count(first) < after + 1 <= first.sequence
    assert cold.append("job", span=2, metrics=packed.pack(batch[:2])).sequence == 26
    for each in (log, cold):
        await each.close()
        await each._db.close()


async def test_an_urgent_event_is_committed_at_once_with_what_is_queued(
    tmp_path: Path,
) -> None:
    """Metrics wait for the flush interval (here a minute) to share a commit; an event the
    log calls urgent is committed without waiting, and the metrics queued before it go
    with it, in order."""
    log = EventLog(
        await sqlite.connect(tmp_path / "events.sqlite3"),
        model=JobEvent,
        table="events",
        key_field="job_id",
        flush_ms=60_000,
        urgent=lambda event: event.state_change is not None,
    )
    await log.open()
    log.append("job", **metric(1))
    log.append("job", **metric(2))
    await asyncio.sleep(0.2)  # the flusher is waiting out its interval: nothing visible
    assert await log.read("job", 0) == []
    log.append("job", state_change=JobStateChange(state=JobState.COMPLETED))
    seen = await asyncio.wait_for(
        anext(aiter(log.follow_batches("job", 0, is_finished=lambda: False, limit=10))), timeout=30
    )
    assert [e.sequence for e in seen] == [1, 2, 3]
    assert seen[-1].state_change is not None
    log.append("job", **metric(3))  # the interval applies again after it
    await asyncio.sleep(0.2)
    assert [e.sequence for e in await log.read("job", 0)] == [1, 2, 3]
    await log.close()  # flushes what is left
    await log._db.close()


async def test_a_failed_commit_keeps_its_events_for_the_next_one(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "events.sqlite3")
    db = log._db
    real_commit = db.commit
    failures = 1

    async def failing_commit() -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError("disk full")
        await real_commit()

    db.commit = failing_commit  # type: ignore[method-assign]
    for step in (1, 2):
        log.append("job", **metric(step))
    with pytest.raises(OSError, match="disk full"):
        await log.flush()
    assert await log.read("job", 0) == []  # nothing half-written is visible
    log.append("job", **metric(3))
    await log.flush()
    db.commit = real_commit  # type: ignore[method-assign]
    cold = await open_log(tmp_path / "events.sqlite3")
    assert [e.sequence for e in await cold.read("job", 0)] == [1, 2, 3]  # no gap, no reuse
    for each in (log, cold):
        await each.close()
        await each._db.close()
