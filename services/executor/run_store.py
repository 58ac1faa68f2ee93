"""Where the executor keeps its runs: a Protocol and its SQLite implementation.

A row holds the run as JSON, the request id that made it (a retried StartRun or
PrepareRun gets that run back), and the ``launcher.Locator`` of its trainer, so that a
restarted executor can find and kill what its predecessor left running.
"""

from __future__ import annotations

from typing import Protocol

import aiosqlite

from arc_common.models import JobState, Run
from services.executor.launcher import Locator

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    state TEXT NOT NULL,
    run TEXT NOT NULL,
    pgid INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_state ON runs(state);
CREATE INDEX IF NOT EXISTS runs_request ON runs(request_id);
"""

LIVE_STATES = (JobState.QUEUED, JobState.STARTING, JobState.RUNNING)


class RunStore(Protocol):
    async def open(self) -> None: ...

    async def save(self, run: Run, *, request_id: str = "", locator: Locator | None = None) -> None:
        """Insert or update ``run``; its locator is kept unless a new one is given."""
        ...

    async def get(self, run_id: str) -> Run | None: ...

    async def by_request(self, request_id: str) -> str | None:
        """The id of the run that ``request_id`` made, if any."""
        ...

    async def live(self) -> list[tuple[Run, Locator]]:
        """Runs stored as live (queued, starting, running), with their locators."""
        ...


class SqliteRunStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def open(self) -> None:
        await self._db.executescript(SCHEMA)
        async with self._db.execute("PRAGMA table_info(runs)") as cursor:
            columns = {row[1] async for row in cursor}
        if "pgid_start" not in columns:  # a workspace from before the warm pool
            await self._db.execute(
                "ALTER TABLE runs ADD COLUMN pgid_start INTEGER NOT NULL DEFAULT 0"
            )
        await self._db.commit()

    async def save(self, run: Run, *, request_id: str = "", locator: Locator | None = None) -> None:
        where = locator or Locator()
        await self._db.execute(
            "INSERT INTO runs (run_id, job_id, request_id, state, run, pgid, pgid_start) "
            "VALUES (:run_id, :job_id, :request_id, :state, :run, :pgid, :started) "
            "ON CONFLICT(run_id) DO UPDATE SET state = excluded.state, run = excluded.run, "
            "pgid = CASE WHEN excluded.pgid > 0 THEN excluded.pgid ELSE runs.pgid END, "
            "pgid_start = CASE WHEN excluded.pgid > 0 THEN excluded.pgid_start "
            "ELSE runs.pgid_start END",
            {
                "run_id": run.run_id,
                "job_id": run.job_id,
                "request_id": request_id,
                "state": run.state.value if run.state else "",
                "run": run.model_dump_json(),
                "pgid": where.pgid,
                "started": where.started,
            },
        )
        await self._db.commit()

    async def get(self, run_id: str) -> Run | None:
        async with self._db.execute("SELECT run FROM runs WHERE run_id = ?", (run_id,)) as cur:
            row = await cur.fetchone()
        return Run.model_validate_json(row[0]) if row is not None else None

    async def by_request(self, request_id: str) -> str | None:
        async with self._db.execute(
            "SELECT run_id FROM runs WHERE request_id = ?", (request_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row is not None else None

    async def live(self) -> list[tuple[Run, Locator]]:
        marks = ", ".join("?" for _ in LIVE_STATES)
        async with self._db.execute(
            f"SELECT run, pgid, pgid_start FROM runs WHERE state IN ({marks})",
            [state.value for state in LIVE_STATES],
        ) as cursor:
            return [
                (Run.model_validate_json(run), Locator(int(pgid), int(started)))
                async for run, pgid, started in cursor
            ]
