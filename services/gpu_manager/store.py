"""Durable lease state: a Protocol and its aiosqlite (WAL) implementation.

Every grant, renewal and release is committed before the caller hears about it, so a
kill -9 loses nothing that was acknowledged. Fencing tokens are kept per GPU and only grow.
A request id belongs to its caller and is stored with the digest of the request's body.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiosqlite

from arc_common import sqlite

logger = logging.getLogger(__name__)


@dataclass
class LeaseRecord:
    lease_id: str
    job_id: str
    request_id: str
    gpu_indices: tuple[int, ...]
    fencing_token: int
    create_time: float
    expire_time: float
    ttl_seconds: float
    released: bool = False
    caller: str = ""  # the identity whose request_id this is
    request_digest: str = ""  # of the AcquireLease body, without its request_id


class LeaseStore(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def load_live(self) -> list[LeaseRecord | tuple[str, str]]: ...
    async def load_tokens(self) -> dict[int, int]: ...
    async def find_by_request_id(self, caller: str, request_id: str) -> LeaseRecord | None: ...
    async def find(self, lease_id: str) -> LeaseRecord | None: ...
    async def grant(self, record: LeaseRecord) -> None: ...
    async def update(self, record: LeaseRecord) -> None: ...
    async def release_many(self, lease_ids: list[str]) -> None: ...
    async def quarantine(self, lease_id: str, reason: str) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    lease_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    gpu_indices TEXT NOT NULL,
    fencing_token INTEGER NOT NULL,
    create_time REAL NOT NULL,
    expire_time REAL NOT NULL,
    ttl_seconds REAL NOT NULL,
    released INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS leases_live ON leases(released);
CREATE TABLE IF NOT EXISTS gpu_tokens (
    gpu_index INTEGER PRIMARY KEY,
    last_token INTEGER NOT NULL
);
"""

# Added after the first release: a database without them gets them on open.
_ADDED_COLUMNS = {
    "caller": "TEXT NOT NULL DEFAULT ''",
    "request_digest": "TEXT NOT NULL DEFAULT ''",
    "quarantine_reason": "TEXT NOT NULL DEFAULT ''",
}
# Request ids are unique per caller (the old index made them unique for everyone).
_INDEXES = """
DROP INDEX IF EXISTS leases_request;
CREATE UNIQUE INDEX IF NOT EXISTS leases_caller_request ON leases(caller, request_id)
    WHERE request_id != '';
"""

_COLUMNS = (
    "lease_id, job_id, request_id, gpu_indices, fencing_token, create_time, expire_time, "
    "ttl_seconds, released, caller, request_digest"
)


def _row_to_record(row: aiosqlite.Row) -> LeaseRecord:
    return LeaseRecord(
        lease_id=row[0],
        job_id=row[1],
        request_id=row[2],
        gpu_indices=tuple(json.loads(row[3])),
        fencing_token=row[4],
        create_time=row[5],
        expire_time=row[6],
        ttl_seconds=row[7],
        released=bool(row[8]),
        caller=row[9],
        request_digest=row[10],
    )


class SqliteLeaseStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        self._db = await sqlite.connect(self._path)
        await self._db.executescript(_SCHEMA)
        async with self._db.execute("PRAGMA table_info(leases)") as cursor:
            present = {row[1] async for row in cursor}
        for name, declaration in _ADDED_COLUMNS.items():
            if name not in present:
                await self._db.execute(f"ALTER TABLE leases ADD COLUMN {name} {declaration}")
        await self._db.executescript(_INDEXES)
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def load_live(self) -> list[LeaseRecord | tuple[str, str]]:
        """Live leases; a row that cannot be read comes back as (lease_id, why) instead."""
        out: list[LeaseRecord | tuple[str, str]] = []
        async with self.db.execute(
            f"SELECT {_COLUMNS} FROM leases WHERE released = 0 ORDER BY create_time"
        ) as cursor:
            async for row in cursor:
                try:
                    out.append(_row_to_record(row))
                except (TypeError, ValueError) as exc:
                    out.append((str(row[0]), f"unreadable row: {exc!r}"))
        return out

    async def load_tokens(self) -> dict[int, int]:
        async with self.db.execute("SELECT gpu_index, last_token FROM gpu_tokens") as cursor:
            return {row[0]: row[1] async for row in cursor}

    async def find_by_request_id(self, caller: str, request_id: str) -> LeaseRecord | None:
        async with self.db.execute(
            f"SELECT {_COLUMNS} FROM leases WHERE caller = ? AND request_id = ?",
            (caller, request_id),
        ) as cursor:
            row = await cursor.fetchone()
        return _row_to_record(row) if row else None

    async def find(self, lease_id: str) -> LeaseRecord | None:
        async with self.db.execute(
            f"SELECT {_COLUMNS} FROM leases WHERE lease_id = ?", (lease_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return _row_to_record(row) if row else None

    async def grant(self, record: LeaseRecord) -> None:
        """The lease and the GPUs' new token, in one transaction."""
        await self.db.execute(
            f"INSERT INTO leases ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            (
                record.lease_id,
                record.job_id,
                record.request_id,
                json.dumps(list(record.gpu_indices)),
                record.fencing_token,
                record.create_time,
                record.expire_time,
                record.ttl_seconds,
                record.caller,
                record.request_digest,
            ),
        )
        await self.db.executemany(
            "INSERT INTO gpu_tokens (gpu_index, last_token) VALUES (?, ?) "
            "ON CONFLICT(gpu_index) DO UPDATE SET "
            "last_token = MAX(last_token, excluded.last_token)",
            [(index, record.fencing_token) for index in record.gpu_indices],
        )
        await self.db.commit()

    async def update(self, record: LeaseRecord) -> None:
        await self.db.execute(
            "UPDATE leases SET expire_time = ?, ttl_seconds = ?, released = ? WHERE lease_id = ?",
            (record.expire_time, record.ttl_seconds, int(record.released), record.lease_id),
        )
        await self.db.commit()

    async def release_many(self, lease_ids: list[str]) -> None:
        if not lease_ids:
            return
        await self.db.executemany(
            "UPDATE leases SET released = 1 WHERE lease_id = ?", [(i,) for i in lease_ids]
        )
        await self.db.commit()

    async def quarantine(self, lease_id: str, reason: str) -> None:
        """Take a row that cannot be trusted out of the live set; it stays for a person."""
        await self.db.execute(
            "UPDATE leases SET released = 1, quarantine_reason = ? WHERE lease_id = ?",
            (reason, lease_id),
        )
        await self.db.commit()
