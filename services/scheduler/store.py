"""The scheduler's durable state: experiments and jobs in SQLite (WAL), with group commit.

Writes from concurrent requests are queued and committed together (one fsync per group),
and each caller is answered only after its group is committed: an acknowledged submission
is on disk, and the throughput does not pay one fsync per submission.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from arc_common import sqlite
from arc_common.batch import Batcher
from arc_common.models import (
    ExperimentResult,
    ExperimentSpec,
    Failure,
    JobState,
    Lease,
    RunEndCause,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

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
-- Request ids of the calls whose answer is not a job (a job keeps its own id and digest):
-- one caller's id, the digest of the body it came with, and what it made.
-- Sealed experiments whose test figures an operator released (RevealTestMetrics).
CREATE TABLE IF NOT EXISTS reveals (
    experiment_id TEXT PRIMARY KEY,
    revealed_by TEXT NOT NULL,
    reveal_time TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    caller TEXT NOT NULL,
    method TEXT NOT NULL,
    request_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (caller, method, request_id)
);
"""


class JobRecord(BaseModel):
    """Everything the scheduler knows about a job (internal; ``Job`` is the public view)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    job_id: str
    seq: int
    experiment_id: str
    spec: ExperimentSpec
    caller: str = ""  # who submitted it (its name in tokens.json); "" in jobs stored before
    request_id: str = ""
    request_digest: str = ""  # of the submission's body, without its request id
    batch_index: int = -1  # >= 0: request_id is the SubmitJobs batch's, this its item
    priority: int = 5
    state: JobState = JobState.QUEUED
    attempt: int = 1
    retries_used: int = 0
    max_retries: int = 0
    timeout_seconds: int = 3600
    node: str = ""
    run_id: str = ""
    lease: Lease | None = None
    # The run said it is done with its GPUs and the lease was released before its end.
    lease_released: bool = False
    run_sequence: int = 0
    # A run prepared ahead of the job's GPUs (ExecutorService.PrepareRun), on that machine;
    # it becomes the job's run when the job is placed there.
    prepared_run_id: str = ""
    prepared_node: str = ""
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    result: ExperimentResult | None = None
    error_message: str = ""
    # Why the last attempt failed, by class (cleared when a retry completes).
    failure: Failure | None = None
    # Its runs train at half the spec's batch size (after an out-of-memory failure).
    batch_halved: bool = False
    not_before: float = 0.0
    approval: str = ""  # governance pending_request_id while waiting for an operator
    # Its kind (services.scheduler.kinds) and what that kind needs beyond the spec.
    kind: str = "training"
    payload: dict[str, Any] = Field(default_factory=dict)
    cancel_requested: str = ""
    # How a stop the scheduler asked for ends the job: CANCELLED or PRUNED.
    stop_cause: RunEndCause | None = None
    # Its test figures are kept from agent tokens until an operator releases them.
    test_sealed: bool = False
    # The sealed datasets the executor keeps this job out of (none for an operator's job).
    sealed_test_datasets: list[str] = Field(default_factory=list)
    submitted_by_operator: bool = False

    @model_validator(mode="before")
    @classmethod
    def _old_evaluation(cls, data: Any) -> Any:
        """Rows stored before job kinds kept an evaluation job in ``evaluation``."""
        if isinstance(data, dict) and "evaluation" in data:
            data = dict(data)
            evaluation = data.pop("evaluation")
            if evaluation is not None:
                data["kind"], data["payload"] = "evaluation", evaluation
        return data


@dataclass(frozen=True)
class Write:
    """One row: ``INSERT INTO <table> (<columns>) VALUES (...) <tail>``; writes of the same
    shape in a group go to the database as one multi-row statement."""

    table: str
    columns: tuple[str, ...]
    values: tuple[Any, ...]
    tail: str = ""
    verb: str = "INSERT"

    @property
    def shape(self) -> tuple[str, str, tuple[str, ...], str]:
        return (self.verb, self.table, self.columns, self.tail)


Requests = dict[tuple[str, str, str], tuple[str, str]]


class Store(Protocol):
    """What the scheduler needs of its durable state; ``SchedulerStore`` is SQLite's."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def write(self, *writes: Write) -> None: ...
    def put_job(self, job: JobRecord) -> Write: ...
    def put_experiment(
        self, spec: ExperimentSpec, content_hash: str, create_time: datetime
    ) -> Write: ...
    def put_request(
        self, caller: str, method: str, request_id: str, digest: str, target: str
    ) -> Write: ...
    async def load_requests(self) -> Requests: ...
    def put_reveal(self, experiment_id: str, by: str, time: datetime, reason: str) -> Write: ...
    async def load_reveals(self) -> list[tuple[str, str, datetime, str]]: ...
    async def load_jobs(self) -> list[JobRecord]: ...
    async def max_seq(self) -> int: ...
    async def load_experiments(self) -> list[tuple[ExperimentSpec, str, datetime]]: ...


ROWS_PER_STATEMENT = 400  # well under SQLite's 32,766 bound parameters


def _statement(shape: tuple[str, str, tuple[str, ...], str], rows: int) -> str:
    verb, table, columns, tail = shape
    one = "(" + ", ".join("?" * len(columns)) + ")"
    return (
        f"{verb} INTO {table} ({', '.join(columns)}) VALUES "
        + ", ".join([one] * rows)
        + (f" {tail}" if tail else "")
    )


def _apply(db: sqlite3.Connection, writes: list[Write]) -> None:
    """Rows of the same shape in one statement each (a GIL round trip per statement, not
    per row: the store thread then hardly waits on the busy event loop)."""
    by_shape: dict[tuple[str, str, tuple[str, ...], str], list[Write]] = {}
    for write in writes:
        by_shape.setdefault(write.shape, []).append(write)
    for shape, group in by_shape.items():
        for first in range(0, len(group), ROWS_PER_STATEMENT):
            chunk = group[first : first + ROWS_PER_STATEMENT]
            db.execute(_statement(shape, len(chunk)), [v for write in chunk for v in write.values])


class SchedulerStore:
    """One plain SQLite connection owned by one thread: a whole group (its BEGIN, every
    write, the COMMIT) is a single hop to that thread, so a group of 100 submissions costs
    one fsync and one thread switch, not hundreds. The groups are arc_common.batch's."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scheduler-store")
        self._groups: Batcher[list[Write]] = Batcher(
            self._commit_group, name="scheduler-store-writer", executor=self._thread
        )

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            raise RuntimeError("store is not open")
        db = self._db
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, db)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            db = sqlite.connect_sync(self._path)
            db.executescript(SCHEMA)
            return db

        loop = asyncio.get_running_loop()
        self._db = await loop.run_in_executor(self._thread, connect)

    async def close(self) -> None:
        await self._groups.close()
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._thread, db.close)
        self._thread.shutdown(wait=True)

    async def write(self, *writes: Write) -> None:
        """Commit ``writes`` (together, all or none) in the next group; returns once that
        group is committed."""
        if self._db is None:
            raise RuntimeError("store is not open")
        await self._groups.submit(list(writes))

    def _commit_group(self, batch: list[list[Write]]) -> list[BaseException | None]:
        """In the store's thread: the whole group in one transaction. Should it fail (a
        constraint, say), each caller's writes go again in a savepoint of their own, so
        one bad write fails alone."""
        db = self._db
        if db is None:
            raise RuntimeError("store is not open")
        try:
            db.execute("BEGIN IMMEDIATE")
            _apply(db, [write for writes in batch for write in writes])
            db.execute("COMMIT")
            return [None] * len(batch)
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if len(batch) == 1:
                raise
        outcomes: list[BaseException | None] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for writes in batch:
                db.execute("SAVEPOINT one")
                try:
                    _apply(db, writes)
                except sqlite3.Error as exc:
                    db.execute("ROLLBACK TO one")
                    outcomes.append(exc)
                else:
                    outcomes.append(None)
                db.execute("RELEASE one")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return outcomes

    # --- rows ------------------------------------------------------------------------------

    @staticmethod
    def put_job(job: JobRecord) -> Write:
        return Write(
            "jobs",
            ("job_id", "seq", "request_id", "experiment_id", "state", "data"),
            (
                job.job_id,
                job.seq,
                job.request_id,
                job.experiment_id,
                job.state.value,
                job.model_dump_json(),
            ),
            tail="ON CONFLICT(job_id) DO UPDATE SET state = excluded.state, data = excluded.data",
        )

    @staticmethod
    def put_experiment(spec: ExperimentSpec, content_hash: str, create_time: datetime) -> Write:
        # A concurrent submission of the same new experiment writes it twice: same row.
        return Write(
            "experiments",
            ("experiment_id", "content_hash", "cycle_id", "novelty_class", "create_time", "spec"),
            (
                spec.experiment_id,
                content_hash,
                spec.cycle_id,
                spec.novelty_class.value,
                create_time.isoformat(),
                spec.model_dump_json(),
            ),
            verb="INSERT OR IGNORE",
        )

    @staticmethod
    def put_request(caller: str, method: str, request_id: str, digest: str, target: str) -> Write:
        return Write(
            "requests",
            ("caller", "method", "request_id", "digest", "target"),
            (caller, method, request_id, digest, target),
        )

    @staticmethod
    def put_reveal(experiment_id: str, by: str, time: datetime, reason: str) -> Write:
        return Write(
            "reveals",
            ("experiment_id", "revealed_by", "reveal_time", "reason"),
            (experiment_id, by, time.isoformat(), reason),
            verb="INSERT OR IGNORE",  # the first release stands
        )

    async def load_reveals(self) -> list[tuple[str, str, datetime, str]]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT experiment_id, revealed_by, reveal_time, reason FROM reveals"
            ).fetchall()
        )
        return [(r[0], r[1], datetime.fromisoformat(r[2]), r[3]) for r in rows]

    async def load_requests(self) -> Requests:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT caller, method, request_id, digest, target FROM requests"
            ).fetchall()
        )
        return {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}

    async def load_jobs(self) -> list[JobRecord]:
        """Every readable job; a row that does not parse is logged and left where it is
        (for a person), so one bad row never stops the scheduler from starting."""
        rows = await self._run(
            lambda db: db.execute("SELECT job_id, data FROM jobs ORDER BY seq").fetchall()
        )
        jobs = []
        for job_id, data in rows:
            try:
                jobs.append(JobRecord.model_validate_json(data))
            except ValueError as exc:
                logger.error("job row %r skipped, it cannot be read: %s", job_id, exc)
        return jobs

    async def max_seq(self) -> int:
        """The highest stored sequence number, skipped rows included (seq is UNIQUE)."""
        row = await self._run(lambda db: db.execute("SELECT MAX(seq) FROM jobs").fetchone())
        return int(row[0] or 0)

    async def load_experiments(self) -> list[tuple[ExperimentSpec, str, datetime]]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT spec, content_hash, create_time FROM experiments ORDER BY create_time"
            ).fetchall()
        )
        return [
            (ExperimentSpec.model_validate_json(r[0]), r[1], datetime.fromisoformat(r[2]))
            for r in rows
        ]
