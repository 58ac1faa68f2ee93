"""Mutating calls by request id: a retried call gets the first answer, not a second execution.

Every service keeps one (its own table in its own database) under the RPCs that change
something; ``RequestLedger.call`` wraps a servicer method.

An id belongs to its caller (the key holds the caller's name) and to the exact request it
came with (the digest of its body): the same body again gets the stored answer, another
body under that id is ALREADY_EXISTS, never the answer to a request it did not send.
"""

from __future__ import annotations

import asyncio
import hmac
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiosqlite
from google.protobuf.message import Message

from arc_common.digest import message_digest
from arc_common.errors import AlreadyExistsError, InvalidArgumentError

M = TypeVar("M", bound=Message)

MAX_REQUEST_ID = 256


class RequestLedger:
    def __init__(
        self,
        db: aiosqlite.Connection,
        table: str = "tool_calls",
        *,
        commit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``commit``: how the connection's writes are committed (default ``db.commit``),
        for a connection whose owner orders its commits."""
        if not table.isidentifier():
            raise ValueError(f"bad table name {table!r}")
        self._db = db
        self._commit = commit or db.commit
        self._table = table
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def open(self) -> None:
        await self._db.execute(
            f"CREATE TABLE IF NOT EXISTS {self._table} "
            "(key TEXT PRIMARY KEY, response BLOB NOT NULL)"
        )
        async with self._db.execute(f"PRAGMA table_info({self._table})") as cursor:
            columns = {row[1] async for row in cursor}
        if "digest" not in columns:  # a workspace from before bodies were bound
            await self._db.execute(
                f"ALTER TABLE {self._table} ADD COLUMN digest TEXT NOT NULL DEFAULT ''"
            )
        await self._commit()

    async def call(
        self,
        caller: str,
        rpc: str,
        request: Any,  # a request message with a request_id field
        response_type: type[M],
        call: Callable[[], Awaitable[M]],
    ) -> M:
        """``call`` once per (caller, rpc, request.request_id), bound to the request's body;
        a request without a request_id always runs."""
        request_id: str = request.request_id
        if len(request_id) > MAX_REQUEST_ID:
            raise InvalidArgumentError(
                f"request_id must be at most {MAX_REQUEST_ID} characters", field="request_id"
            )
        key = f"{caller}:{rpc}:{request_id}" if request_id else ""
        return await self.once(
            key, response_type, call, digest=message_digest(request), request_id=request_id
        )

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
                f"SELECT response, digest FROM {self._table} WHERE key = ?", (key,)
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
                f"INSERT INTO {self._table} (key, response, digest) VALUES (?, ?, ?)",
                (key, response.SerializeToString(), digest),
            )
            await self._commit()
            return response
