"""The scheduler's durable state: experiments and jobs in SQLite (WAL), with group commit.

Writes from concurrent requests are queued and committed together (one fsync per group),
and each caller is answered only after its group is committed: an acknowledged submission
is on disk, and the throughput does not pay one fsync per submission.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

import aiosqlite
from pydantic import BaseModel, ConfigDict

from arc_common import sqlite
from arc_common.models import EvaluationJob, ExperimentResult, ExperimentSpec, JobState, Lease

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    experiment_id TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    cycle_id INTEGER NOT NULL,
    novelty_class TEXT NOT NULL,
    create_time TEXT NOT NULL,
    spec TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS experiments_hash ON experiments(content_hash);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    request_id TEXT NOT NULL,
    experiment_id TEXT NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_request ON jobs(request_id);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""


class JobRecord(BaseModel):
    """Everything the scheduler knows about a job (internal; ``Job`` is the public view)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    job_id: str
    seq: int
    experiment_id: str
    spec: ExperimentSpec
    caller: str = ""
    request_id: str = ""
    priority: int = 5
    state: JobState = JobState.QUEUED
    attempt: int = 1
    retries_used: int = 0
    max_retries: int = 0
    timeout_seconds: int = 3600
    node: str = ""
    run_id: str = ""
    lease: Lease | None = None
    run_sequence: int = 0
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    result: ExperimentResult | None = None
    error_message: str = ""
    not_before: float = 0.0
    approval: str = ""  # governance pending_request_id while waiting for an operator
    evaluation: EvaluationJob | None = None  # an evaluation job instead of a training run
    cancel_requested: str = ""


Write = Callable[[aiosqlite.Connection], Awaitable[None]]


class SchedulerStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None
        self._pending: list[tuple[Write, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        self._db = await sqlite.connect(self._path)
        await self._db.executescript(SCHEMA)
        await self._db.commit()
        self._task = asyncio.create_task(self._writer(), name="scheduler-store-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drain()
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def write(self, *writes: Write) -> None:
        """Run ``writes`` in the next group; returns once that group is committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def together(db: aiosqlite.Connection) -> None:
            for write in writes:
                await write(db)

        self._pending.append((together, future))
        self._wake.set()
        await future

    async def _drain(self) -> None:
        if not self._pending or self._db is None:
            return
        batch, self._pending = self._pending, []
        done: list[asyncio.Future[None]] = []
        try:
            # One transaction for the group; each write in a savepoint so one failing
            # write (a constraint, say) fails alone.
            if not self._db.in_transaction:
                await self._db.execute("BEGIN IMMEDIATE")
            for write, future in batch:
                await self._db.execute("SAVEPOINT one")
                try:
                    await write(self._db)
                except Exception as exc:
                    await self._db.execute("ROLLBACK TO one")
                    future.set_exception(exc)
                else:
                    done.append(future)
                await self._db.execute("RELEASE one")
            await self._db.commit()
        except Exception as exc:
            logger.exception("scheduler store commit failed")
            for future in done:
                if not future.done():
                    future.set_exception(exc)
            return
        for future in done:
            if not future.done():
                future.set_result(None)

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._drain()

    # --- rows ------------------------------------------------------------------------------

    @staticmethod
    def put_job(job: JobRecord) -> Write:
        data = job.model_dump_json()

        async def write(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO jobs (job_id, seq, request_id, experiment_id, state, data) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET "
                "state = excluded.state, data = excluded.data",
                (job.job_id, job.seq, job.request_id, job.experiment_id, job.state.value, data),
            )

        return write

    @staticmethod
    def put_experiment(spec: ExperimentSpec, content_hash: str, create_time: datetime) -> Write:
        async def write(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO experiments VALUES (?, ?, ?, ?, ?, ?)",
                (
                    spec.experiment_id,
                    content_hash,
                    spec.cycle_id,
                    spec.novelty_class.value,
                    create_time.isoformat(),
                    spec.model_dump_json(),
                ),
            )

        return write

    async def load_jobs(self) -> list[JobRecord]:
        async with self.db.execute("SELECT data FROM jobs ORDER BY seq") as cursor:
            return [JobRecord.model_validate_json(row[0]) async for row in cursor]

    async def load_experiments(self) -> list[tuple[ExperimentSpec, str, datetime]]:
        async with self.db.execute(
            "SELECT spec, content_hash, create_time FROM experiments ORDER BY create_time"
        ) as cursor:
            return [
                (
                    ExperimentSpec.model_validate_json(row[0]),
                    row[1],
                    datetime.fromisoformat(row[2]),
                )
                async for row in cursor
            ]
