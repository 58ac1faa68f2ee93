"""The audit log's anchor files: the head (count and hash) kept outside its database, so
that a log cut short is seen. Each is one 512-byte sector, overwritten in place."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from concurrent.futures import Executor
from pathlib import Path

from services.governance.audit_records import ANCHOR_BYTES, Anchor

# The anchor is written after every commit and fsync'd at most this often, off the loop.
ANCHOR_SYNC_SECONDS = 0.1


def read_anchor(path: Path) -> Anchor | None:
    """None when the file is missing; an anchor that matches nothing when unreadable."""
    try:
        return Anchor.decode(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return Anchor(-1, "")


class AnchorFiles:
    def __init__(self, paths: list[Path], thread: Executor) -> None:
        self.paths = paths
        self._thread = thread  # the log's writer thread: fsyncs never block the loop
        self._fds: dict[Path, int] = {}
        self._synced = 0.0  # monotonic time of the last fsync
        self._sync: asyncio.Future[None] | None = None
        self._dirty = False  # written since the last fsync

    def read(self) -> dict[str, Anchor | None]:
        return {str(path): read_anchor(path) for path in self.paths}

    def write(self, anchor: Anchor, *, sync: bool = True) -> None:
        """Overwrite each file in place: JSON padded to one 512-byte sector (a sector is
        written whole or not at all), then fdatasync unless ``sync`` is False (a group
        commit's anchor: ``sync_soon``). No temporary file, no rename: the anchors are
        written once per group commit."""
        body = anchor.encode().encode().ljust(ANCHOR_BYTES)
        for path in self.paths:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.pwrite(fd, body, 0)
            if os.fstat(fd).st_size != ANCHOR_BYTES:
                os.ftruncate(fd, ANCHOR_BYTES)  # an anchor written otherwise
                os.fsync(fd)
            elif sync:
                os.fdatasync(fd)

    def sync_soon(self) -> None:
        """fsync the anchors on the writer thread, at most every ANCHOR_SYNC_SECONDS and
        one at a time: a power loss can leave them that far behind the log, never ahead."""
        self._dirty = True
        if self._sync is None or self._sync.done():
            self._sync = asyncio.ensure_future(self._sync_later())

    async def _sync_later(self) -> None:
        loop = asyncio.get_running_loop()
        while self._dirty:  # a commit during a sync: one more after it
            await asyncio.sleep(max(0.0, self._synced + ANCHOR_SYNC_SECONDS - time.monotonic()))
            self._dirty = False
            self._synced = time.monotonic()
            for fd in list(self._fds.values()):  # close() shuts them after the thread
                await loop.run_in_executor(self._thread, os.fdatasync, fd)

    async def stop_syncing(self) -> None:
        """Cancel the pending fsync and do it now, on the caller's thread."""
        if self._sync is not None:
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync
        for fd in self._fds.values():
            os.fdatasync(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
