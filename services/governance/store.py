"""Governance's durable state in SQLite: mode, bound decisions, usage, pending requests,
transactions, quarantined rows. Columns are read by name.

Nothing here commits on its own: every caller says when its writes are committed
(``commit``), and a commit waits first for the audit records of everything it commits
(``before_commit``): a decision, a mode or an approval never reaches the disk without its
record. Decisions share their commits (the validator's group commit).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from arc_common import sqlite
from arc_common.errors import NotFoundError
from arc_common.models import (
    Decision,
    PendingRequest,
    PendingRequestState,
    Tool,
    Transaction,
    TransactionState,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bound_decisions (
    caller TEXT NOT NULL, via TEXT NOT NULL, request_id TEXT NOT NULL, tool TEXT NOT NULL,
    params_digest TEXT NOT NULL, decision TEXT NOT NULL,
    PRIMARY KEY (caller, via, request_id)
);
CREATE TABLE IF NOT EXISTS usage (
    caller TEXT NOT NULL, cycle_id INTEGER NOT NULL, gpu_hours REAL NOT NULL,
    PRIMARY KEY (caller, cycle_id)
);
CREATE TABLE IF NOT EXISTS pending (
    pending_request_id TEXT PRIMARY KEY, caller TEXT NOT NULL, request_id TEXT NOT NULL,
    tool TEXT NOT NULL, parameters TEXT NOT NULL, state TEXT NOT NULL,
    create_time REAL NOT NULL, expire_time REAL NOT NULL, decided_by TEXT NOT NULL,
    reason TEXT NOT NULL, cycle_id INTEGER NOT NULL, gpu_hours REAL NOT NULL,
    params_digest TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS pending_state ON pending(state);
CREATE TABLE IF NOT EXISTS transactions (
    transaction_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, tool TEXT NOT NULL,
    paths TEXT NOT NULL, state TEXT NOT NULL, caller TEXT NOT NULL,
    create_time REAL NOT NULL, expire_time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS transactions_state ON transactions(state);
CREATE TABLE IF NOT EXISTS quarantine (
    kind TEXT NOT NULL, key TEXT NOT NULL, row TEXT NOT NULL, reason TEXT NOT NULL,
    time REAL NOT NULL
);
"""


def when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True)
class BoundDecision:
    """A decision taken under a request id, with what it was taken for."""

    tool: str
    params_digest: str
    decision: Decision


@dataclass(frozen=True)
class PendingRow:
    """A request waiting for an operator, with the budget an approval charges."""

    request: PendingRequest
    cycle_id: int
    gpu_hours: float
    params_digest: str


def _pending(row: aiosqlite.Row) -> PendingRow:
    return PendingRow(
        request=PendingRequest(
            pending_request_id=row["pending_request_id"],
            caller=row["caller"],
            tool=Tool(row["tool"]),
            parameters=json.loads(row["parameters"]),
            state=PendingRequestState(row["state"]),
            create_time=when(row["create_time"]),
            expire_time=when(row["expire_time"]),
            decided_by=row["decided_by"],
            reason=row["reason"],
        ),
        cycle_id=int(row["cycle_id"]),
        gpu_hours=float(row["gpu_hours"]),
        params_digest=str(row["params_digest"]),
    )


def _transaction(row: aiosqlite.Row) -> Transaction:
    return Transaction(
        transaction_id=row["transaction_id"],
        tool=Tool(row["tool"]),
        paths=json.loads(row["paths"]),
        state=TransactionState(row["state"]),
        caller=row["caller"],
        create_time=when(row["create_time"]),
        expire_time=when(row["expire_time"]),
    )


class GovernanceStore:
    def __init__(
        self, path: Path, *, before_commit: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """``before_commit``: awaited before every commit, the last await before it is
        queued (governance waits there until every audit record is on disk)."""
        self._path = path
        self._before_commit = before_commit
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("governance store is not open")
        return self._db

    async def open(self) -> None:
        self._db = await sqlite.connect(self._path)
        self._db.row_factory = aiosqlite.Row
        await self._db.executescript(SCHEMA)
        await self._migrate()
        await self._db.commit()

    async def _migrate(self) -> None:
        """Databases made before approvals were bound to their parameters' digest. Their
        unbound decisions (table ``decisions``) are kept but never replayed."""
        async with self.db.execute("PRAGMA table_info(pending)") as cursor:
            columns = [str(row["name"]) async for row in cursor]
        if "params_digest" not in columns:
            await self.db.execute(
                "ALTER TABLE pending ADD COLUMN params_digest TEXT NOT NULL DEFAULT ''"
            )

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def commit(self) -> None:
        if self._before_commit is not None:
            await self._before_commit()
        await self.db.commit()

    async def _one(self, query: str, args: tuple[Any, ...]) -> aiosqlite.Row | None:
        async with self.db.execute(query, args) as cursor:
            row: aiosqlite.Row | None = await cursor.fetchone()
        return row

    # --- state -------------------------------------------------------------------------

    async def get_state(self, key: str) -> str | None:
        row = await self._one("SELECT value FROM state WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    async def put_state(self, key: str, value: str) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value)
        )

    async def delete_state(self, key: str) -> None:
        await self.db.execute("DELETE FROM state WHERE key = ?", (key,))

    # --- decisions bound to request ids ------------------------------------------------

    async def bound_decision(self, caller: str, via: str, request_id: str) -> BoundDecision | None:
        row = await self._one(
            "SELECT tool, params_digest, decision FROM bound_decisions "
            "WHERE caller = ? AND via = ? AND request_id = ?",
            (caller, via, request_id),
        )
        if row is None:
            return None
        return BoundDecision(
            tool=str(row["tool"]),
            params_digest=str(row["params_digest"]),
            decision=Decision.model_validate_json(row["decision"]),
        )

    async def bind_decision(
        self,
        caller: str,
        via: str,
        request_id: str,
        *,
        tool: Tool,
        digest: str,
        decision: Decision,
    ) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO bound_decisions "
            "(caller, via, request_id, tool, params_digest, decision) VALUES (?, ?, ?, ?, ?, ?)",
            (caller, via, request_id, tool.value, digest, decision.model_dump_json()),
        )

    # --- usage ----------------------------------------------------------------------------

    async def used_gpu_hours(self, caller: str, cycle_id: int) -> float:
        row = await self._one(
            "SELECT gpu_hours FROM usage WHERE caller = ? AND cycle_id = ?", (caller, cycle_id)
        )
        return float(row["gpu_hours"]) if row else 0.0

    async def charge(self, caller: str, cycle_id: int, hours: float) -> None:
        await self.db.execute(
            "INSERT INTO usage (caller, cycle_id, gpu_hours) VALUES (?, ?, ?) "
            "ON CONFLICT(caller, cycle_id) "
            "DO UPDATE SET gpu_hours = gpu_hours + excluded.gpu_hours",
            (caller, cycle_id, hours),
        )

    async def open_jobs(self, caller: str) -> int:
        row = await self._one(
            "SELECT COUNT(*) AS n FROM transactions WHERE caller = ? AND tool = ? AND state = ?",
            (caller, Tool.RUN_TRAINING_JOB.value, TransactionState.OPEN.value),
        )
        return int(row["n"]) if row else 0

    # --- pending requests -----------------------------------------------------------------

    async def add_pending(
        self,
        *,
        pending_request_id: str,
        caller: str,
        request_id: str,
        tool: Tool,
        parameters: dict[str, Any],
        create_time: float,
        expire_time: float,
        cycle_id: int,
        gpu_hours: float,
        params_digest: str,
    ) -> None:
        await self.db.execute(
            "INSERT INTO pending (pending_request_id, caller, request_id, tool, parameters, "
            "state, create_time, expire_time, decided_by, reason, cycle_id, gpu_hours, "
            "params_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '', '', ?, ?, ?)",
            (
                pending_request_id,
                caller,
                request_id,
                tool.value,
                json.dumps(parameters, default=str),
                PendingRequestState.PENDING.value,
                create_time,
                expire_time,
                cycle_id,
                gpu_hours,
                params_digest,
            ),
        )

    async def pending(self, pending_request_id: str) -> PendingRow:
        row = await self._one(
            "SELECT * FROM pending WHERE pending_request_id = ?", (pending_request_id,)
        )
        if row is None:
            raise NotFoundError(
                f"no pending request {pending_request_id!r}", field="pending_request_id"
            )
        return _pending(row)

    async def list_pending(self, *, offset: int, limit: int) -> list[PendingRequest]:
        async with self.db.execute(
            "SELECT * FROM pending WHERE state = ? ORDER BY create_time LIMIT ? OFFSET ?",
            (PendingRequestState.PENDING.value, limit, offset),
        ) as cursor:
            return [_pending(row).request async for row in cursor]

    async def expired_pending(self, now: float) -> list[PendingRequest]:
        async with self.db.execute(
            "SELECT * FROM pending WHERE state = ? AND expire_time <= ?",
            (PendingRequestState.PENDING.value, now),
        ) as cursor:
            return [_pending(row).request async for row in cursor]

    async def decide_pending(
        self,
        pending_request_id: str,
        state: PendingRequestState,
        *,
        reason: str,
        decided_by: str | None = None,
    ) -> None:
        if decided_by is None:
            await self.db.execute(
                "UPDATE pending SET state = ?, reason = ? WHERE pending_request_id = ?",
                (state.value, reason, pending_request_id),
            )
        else:
            await self.db.execute(
                "UPDATE pending SET state = ?, decided_by = ?, reason = ? "
                "WHERE pending_request_id = ?",
                (state.value, decided_by, reason, pending_request_id),
            )

    # --- transactions ---------------------------------------------------------------------

    async def add_transaction(
        self,
        *,
        transaction_id: str,
        request_id: str,
        tool: Tool,
        paths: list[str],
        caller: str,
        create_time: float,
        expire_time: float,
    ) -> None:
        await self.db.execute(
            "INSERT INTO transactions (transaction_id, request_id, tool, paths, state, caller, "
            "create_time, expire_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                transaction_id,
                request_id,
                tool.value,
                json.dumps(paths),
                TransactionState.OPEN.value,
                caller,
                create_time,
                expire_time,
            ),
        )

    async def transaction(self, transaction_id: str) -> Transaction:
        row = await self._one(
            "SELECT * FROM transactions WHERE transaction_id = ?", (transaction_id,)
        )
        if row is None:
            raise NotFoundError(f"no transaction {transaction_id!r}", field="transaction_id")
        return _transaction(row)

    async def open_transaction(self, *, request_id: str, caller: str) -> Transaction | None:
        row = await self._one(
            "SELECT * FROM transactions WHERE request_id = ? AND caller = ? AND state = ?",
            (request_id, caller, TransactionState.OPEN.value),
        )
        return None if row is None else _transaction(row)

    async def open_transaction_ids(self, *, expired_by: float | None = None) -> list[str]:
        """Every open transaction, or only those expired by ``expired_by``."""
        query = "SELECT transaction_id FROM transactions WHERE state = ?"
        args: tuple[Any, ...] = (TransactionState.OPEN.value,)
        if expired_by is not None:
            query += " AND expire_time <= ?"
            args = (*args, expired_by)
        async with self.db.execute(query, args) as cursor:
            return [str(row["transaction_id"]) async for row in cursor]

    async def set_transaction_state(self, transaction_id: str, state: TransactionState) -> None:
        await self.db.execute(
            "UPDATE transactions SET state = ? WHERE transaction_id = ?",
            (state.value, transaction_id),
        )

    async def quarantine_transaction(self, transaction_id: str, reason: str, now: float) -> None:
        """Move the row out of the table, verbatim, for an operator to look at."""
        row = await self._one(
            "SELECT * FROM transactions WHERE transaction_id = ?", (transaction_id,)
        )
        await self.db.execute(
            "INSERT INTO quarantine (kind, key, row, reason, time) "
            "VALUES ('transaction', ?, ?, ?, ?)",
            (transaction_id, json.dumps(list(row or ()), default=str), reason, now),
        )
        await self.db.execute(
            "DELETE FROM transactions WHERE transaction_id = ?", (transaction_id,)
        )
