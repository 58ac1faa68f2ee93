"""Durable lease state: a Protocol and its aiosqlite (WAL) implementation.

Every grant, renewal and release is committed before the caller hears about it, so a
kill -9 loses nothing that was acknowledged. Fencing tokens are kept per GPU and only grow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiosqlite

from arc_common import sqlite


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


class LeaseStore(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def load_live(self) -> list[LeaseRecord]: ...
    async def load_tokens(self) -> dict[int, int]: ...
    async def find_by_request_id(self, request_id: str) -> LeaseRecord | None: ...
    async def find(self, lease_id: str) -> LeaseRecord | None: ...
    async def grant(self, record: LeaseRecord) -> None: ...
    async def update(self, record: LeaseRecord) -> None: ...
    async def release_many(self, lease_ids: list[str]) -> None: ...


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
CREATE UNIQUE INDEX IF NOT EXISTS leases_request ON leases(request_id) WHERE request_id != '';
CREATE TABLE IF NOT EXISTS gpu_tokens (
    gpu_index INTEGER PRIMARY KEY,
    last_token INTEGER NOT NULL
);
"""

_COLUMNS = (
    "lease_id, job_id, request_id, gpu_indices, fencing_token, create_time, expire_time, "
    "ttl_seconds, released"
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
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def load_live(self) -> list[LeaseRecord]:
        async with self.db.execute(
            f"SELECT {_COLUMNS} FROM leases WHERE released = 0 ORDER BY create_time"
        ) as cursor:
            return [_row_to_record(row) async for row in cursor]

    async def load_tokens(self) -> dict[int, int]:
        async with self.db.execute("SELECT gpu_index, last_token FROM gpu_tokens") as cursor:
            return {row[0]: row[1] async for row in cursor}

    async def find_by_request_id(self, request_id: str) -> LeaseRecord | None:
        async with self.db.execute(
            f"SELECT {_COLUMNS} FROM leases WHERE request_id = ?", (request_id,)
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
            f"INSERT INTO leases ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (
                record.lease_id,
                record.job_id,
                record.request_id,
                json.dumps(list(record.gpu_indices)),
                record.fencing_token,
                record.create_time,
                record.expire_time,
                record.ttl_seconds,
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
