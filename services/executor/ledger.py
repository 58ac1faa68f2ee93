"""Tool calls by request id: a retried call gets the first answer, not a second execution."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiosqlite
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

SCHEMA = """
CREATE TABLE IF NOT EXISTS tool_calls (
    key TEXT PRIMARY KEY,
    response BLOB NOT NULL
);
"""


class ToolLedger:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def open(self) -> None:
        await self._db.executescript(SCHEMA)
        await self._db.commit()

    async def once(self, key: str, response_type: type[M], call: Callable[[], Awaitable[M]]) -> M:
        """Run ``call`` once per key; later calls with the key get the stored answer.

        Failures are not stored: a retry after a failure runs again (nothing was changed,
        the transaction rolled it back).
        """
        if not key:
            return await call()
        async with self._locks[key]:
            async with self._db.execute(
                "SELECT response FROM tool_calls WHERE key = ?", (key,)
            ) as cursor:
                row = await cursor.fetchone()
            if row is not None:
                stored = response_type()
                stored.ParseFromString(row[0])
                return stored
            response = await call()
            await self._db.execute(
                "INSERT INTO tool_calls (key, response) VALUES (?, ?)",
                (key, response.SerializeToString()),
            )
            await self._db.commit()
            return response
