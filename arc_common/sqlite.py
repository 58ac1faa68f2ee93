"""How every service opens its SQLite database: WAL, full fsync, and patience when busy;
and group commit, so that concurrent writers share one commit."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite

BUSY_TIMEOUT_MS = 10_000


async def connect(path: Path) -> aiosqlite.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path)
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=FULL")
    await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return db


def connect_sync(path: Path) -> sqlite3.Connection:
    """The same settings for a plain connection that one thread of the caller's owns (it
    may be opened on another): transactions are explicit (BEGIN ... COMMIT)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return db


class GroupCommit:
    """``await wait()`` returns once a commit that began after the call has completed; the
    callers that arrive while one commit is on its way share the next one. A failed commit
    fails every caller waiting on it."""

    def __init__(self, commit: Callable[[], Awaitable[None]]) -> None:
        self._commit = commit
        self._begun = 0
        self._done = 0
        self._running: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        ticket = self._begun + 1
        while self._done < ticket:
            if self._running is None or self._running.done():
                self._running = asyncio.ensure_future(self._run())
            await asyncio.shield(self._running)

    async def _run(self) -> None:
        self._begun += 1
        number = self._begun
        await self._commit()
        self._done = number
