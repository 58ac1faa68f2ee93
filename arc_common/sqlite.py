"""How every service opens its SQLite database: WAL, full fsync, and patience when busy."""

from __future__ import annotations

import sqlite3
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
