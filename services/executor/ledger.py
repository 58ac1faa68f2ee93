"""Tool calls by request id: a retried call gets the first answer, not a second execution.

An id belongs to its caller (the key holds the caller's name) and to the exact request it
came with (the digest of its body): the same body again gets the stored answer, another
body under that id is ALREADY_EXISTS, never the answer to a request it did not send.
"""

from __future__ import annotations

import asyncio
import hmac
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiosqlite
from google.protobuf.message import Message

from arc_common.errors import AlreadyExistsError

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
        async with self._db.execute("PRAGMA table_info(tool_calls)") as cursor:
            columns = {row[1] async for row in cursor}
        if "digest" not in columns:  # a workspace from before bodies were bound
            await self._db.execute(
                "ALTER TABLE tool_calls ADD COLUMN digest TEXT NOT NULL DEFAULT ''"
            )
        await self._db.commit()

    async def once(
        self,
        key: str,
        response_type: type[M],
        call: Callable[[], Awaitable[M]],
        *,
        digest: str = "",
        request_id: str = "",
    ) -> M:
        """Run ``call`` once per key; later calls with the key and the same ``digest`` get
        the stored answer, with another digest AlreadyExistsError naming request_id.

        Failures are not stored: a retry after a failure runs again (nothing was changed,
        the transaction rolled it back).
        """
        if not key:
            return await call()
        async with self._locks[key]:
            async with self._db.execute(
                "SELECT response, digest FROM tool_calls WHERE key = ?", (key,)
            ) as cursor:
                row = await cursor.fetchone()
            if row is not None:
                if row[1] and not hmac.compare_digest(row[1], digest):
                    raise AlreadyExistsError(
                        f"request_id {request_id!r} was already used for a different request; "
                        "use a new request_id for a new request",
                        field="request_id",
                    )
                stored = response_type()
                stored.ParseFromString(row[0])
                return stored
            response = await call()
            await self._db.execute(
                "INSERT INTO tool_calls (key, response, digest) VALUES (?, ?, ?)",
                (key, response.SerializeToString(), digest),
            )
            await self._db.commit()
            return response
