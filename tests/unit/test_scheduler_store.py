"""The scheduler's group commit: many callers, one transaction; a bad write fails alone;
job events moved out of an old database once; request ids and owners kept across a
reopen, an old database opens, a bad row does not stop the load; the ownership rule."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from arc_common import sqlite
from arc_common.batch import Batcher
from arc_common.convert import to_model
from arc_common.errors import PermissionDeniedError
from arc_common.models import ExperimentSpec
from services.scheduler.__main__ import EVENTS_TABLE, move_events
from services.scheduler.core import Caller, Scheduler
from services.scheduler.store import JobRecord, SchedulerStore, Write
from tests.integration.scheduler.conftest import spec

SPEC = to_model(spec("e"), ExperimentSpec)


def job(n: int, *, seq: int | None = None) -> JobRecord:
    return JobRecord(job_id=f"job-{n}", seq=n if seq is None else seq, experiment_id="e", spec=SPEC)


async def test_concurrent_writes_share_groups_and_all_land(tmp_path: Path) -> None:
    store = SchedulerStore(tmp_path / "s.sqlite3")
    await store.open()
    await asyncio.gather(*(store.write(store.put_job(job(n))) for n in range(1, 301)))
    # The same job written twice in one group: the later state wins.
    later = job(1)
    later.priority = 9
    await asyncio.gather(store.write(store.put_job(job(1))), store.write(store.put_job(later)))
    await store.close()

    reopened = SchedulerStore(tmp_path / "s.sqlite3")
    await reopened.open()
    jobs = await reopened.load_jobs()
    await reopened.close()
    assert [j.job_id for j in jobs] == [f"job-{n}" for n in range(1, 301)]
    assert jobs[0].priority == 9


async def test_a_failing_write_fails_alone(tmp_path: Path) -> None:
    store = SchedulerStore(tmp_path / "s.sqlite3")
    await store.open()
    await store.write(store.put_job(job(1)))
    # seq is UNIQUE: job-2 with job-1's seq violates it; the others in its group land.
    results = await asyncio.gather(
        store.write(store.put_job(job(3))),
        store.write(store.put_job(job(2, seq=1))),
        store.write(store.put_job(job(4)), store.put_job(job(5))),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert [j.job_id for j in await store.load_jobs()] == ["job-1", "job-3", "job-4", "job-5"]
    await store.close()


async def test_writes_of_one_call_are_all_or_nothing(tmp_path: Path) -> None:
    store = SchedulerStore(tmp_path / "s.sqlite3")
    await store.open()
    await store.write(store.put_job(job(1)))
    with pytest.raises(sqlite3.IntegrityError):
        await store.write(store.put_job(job(2)), store.put_job(job(3, seq=1)))
    assert [j.job_id for j in await store.load_jobs()] == ["job-1"]
    bad = Write("jobs", ("job_id",), ("x",))  # NOT NULL columns missing
    with pytest.raises(sqlite3.IntegrityError):
        await store.write(bad)
    await store.close()


async def test_batcher_groups_concurrent_items_and_reports_failures() -> None:
    batches: list[list[int]] = []
    gate = threading.Event()

    def handle(items: list[int]) -> None:
        gate.wait(5)
        batches.append(list(items))
        if 13 in items:
            raise ValueError("thirteen")

    batcher: Batcher[int] = Batcher(handle)
    first = batcher.post(0)
    await asyncio.sleep(0.05)  # the first batch is being handled; the rest gather
    rest = [batcher.post(n) for n in range(1, 11)]
    gate.set()
    await asyncio.gather(first, *rest)
    assert batches == [[0], list(range(1, 11))]
    with pytest.raises(ValueError, match="thirteen"):
        await batcher.submit(13)
    await batcher.close()


async def test_job_events_move_out_of_the_old_database_once(tmp_path: Path) -> None:
    old = tmp_path / "scheduler.sqlite3"
    with sqlite3.connect(old) as db:
        db.execute(
            f"CREATE TABLE {EVENTS_TABLE} (key TEXT NOT NULL, sequence INTEGER NOT NULL, "
            "event TEXT NOT NULL, PRIMARY KEY (key, sequence)) WITHOUT ROWID"
        )
        db.executemany(
            f"INSERT INTO {EVENTS_TABLE} VALUES (?, ?, ?)",
            [("job-1", 1, "{}"), ("job-1", 2, "{}"), ("job-2", 1, "{}")],
        )
    events_db = await sqlite.connect(tmp_path / "scheduler_events.sqlite3")
    await move_events(events_db, old)
    await move_events(events_db, old)  # nothing left to move: no error, no duplicate
    async with events_db.execute(f"SELECT key, sequence FROM {EVENTS_TABLE}") as cursor:
        rows = sorted([tuple(r) async for r in cursor])
    await events_db.close()
    assert rows == [("job-1", 1), ("job-1", 2), ("job-2", 1)]
    with sqlite3.connect(old) as db:
        left = db.execute("SELECT name FROM sqlite_master WHERE name = ?", (EVENTS_TABLE,))
        assert left.fetchone() is None


async def test_request_ids_and_owners_survive_a_reopen(tmp_path: Path) -> None:
    store = SchedulerStore(tmp_path / "s.sqlite3")
    await store.open()
    item = job(1)
    item.caller, item.request_id, item.request_digest, item.batch_index = "agent", "b", "d1", 0
    await store.write(
        store.put_job(item),
        store.put_request("agent", "CancelJob", "k", "d2", "job-1"),
    )
    await store.close()
    reopened = SchedulerStore(tmp_path / "s.sqlite3")
    await reopened.open()
    [loaded] = await reopened.load_jobs()
    requests = await reopened.load_requests()
    await reopened.close()
    assert (loaded.caller, loaded.request_id, loaded.request_digest, loaded.batch_index) == (
        "agent",
        "b",
        "d1",
        0,
    )
    assert requests == {("agent", "CancelJob", "k"): ("d2", "job-1")}


async def test_an_old_database_opens_and_a_bad_row_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = job(1).model_dump(mode="json")
    for key in ("request_digest", "batch_index"):  # fields this version added
        del old[key]
    old["caller"] = ""
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE jobs (job_id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE,
                request_id TEXT NOT NULL, experiment_id TEXT NOT NULL, state TEXT NOT NULL,
                data TEXT NOT NULL);
            """
        )
        db.execute("INSERT INTO jobs VALUES ('job-1', 1, '', 'e', 'queued', ?)", (json.dumps(old),))
        db.execute("INSERT INTO jobs VALUES ('job-9', 9, '', 'e', 'queued', '{not json')")
    store = SchedulerStore(path)
    await store.open()
    try:
        [loaded] = await store.load_jobs()
        assert (loaded.job_id, loaded.caller, loaded.batch_index) == ("job-1", "", -1)
        assert await store.max_seq() == 9  # a new job never takes the skipped row's seq
        assert await store.load_requests() == {}
    finally:
        await store.close()


def test_a_job_stored_with_an_evaluation_reads_as_an_evaluation_kind() -> None:
    evaluation = {"checkpoint_path": "runs/x/best.pt", "data_path": "data/fundus"}
    old = {**job(1).model_dump(mode="json"), "evaluation": evaluation}
    for key in ("kind", "payload", "stop_cause"):  # fields this version added
        del old[key]
    loaded = JobRecord.model_validate_json(json.dumps(old))
    assert (loaded.kind, loaded.payload) == ("evaluation", evaluation)
    training = JobRecord.model_validate_json(json.dumps({**old, "evaluation": None}))
    assert (training.kind, training.payload) == ("training", {})


@pytest.mark.parametrize(
    ("owner", "caller", "allowed"),
    [
        ("agent", Caller("agent"), True),
        ("operator", Caller("agent"), False),
        ("agent-2", Caller("agent"), False),
        ("agent", Caller("service", service=True), True),
        ("agent", Caller("operator", operator=True), True),
        ("", Caller("agent"), False),  # stored before owners were kept: operators only
        ("", Caller("service", service=True), False),
        ("", Caller("operator", operator=True), True),
    ],
)
def test_who_may_cancel_a_job(owner: str, caller: Caller, allowed: bool) -> None:
    record = job(1)
    record.caller = owner
    if allowed:
        Scheduler.check_owner(record, caller)
    else:
        with pytest.raises(PermissionDeniedError) as info:
            Scheduler.check_owner(record, caller)
        assert info.value.field == "job_id" and "job-1" in str(info.value)
