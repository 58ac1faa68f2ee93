"""The tamper-evident audit log: append-only rows in SQLite, chained by a keyed MAC.

hash(n) = HMAC-SHA256(key, previous_hash || canonical JSON of record n without its hash),
with the ``audit`` key from the secrets directory (arc_common.keys), out of the
workspace's readable files: without it nobody can recompute the chain after an edit.
Records written before the log had a key (sequence < ``keyed_from``, kept in the database
and in every anchor) keep their plain SHA-256 links and are verified as such. Editing a
byte, deleting, reordering or inserting a row breaks the chain at that row's sequence
number. Truncating the tail leaves a valid chain, so the head hash and count are also
kept in three anchors: a ``meta`` row committed with the records, ``audit_anchor.json``
next to the log and a copy in the secrets directory; deleting or rewinding one of them
is a break, as is a log shorter than any of them.
Records of concurrent callers share one commit and one anchor write (group commit); each
caller is answered only once its record is committed (fsync'd) and its anchor written. The
anchor reaches the disk within ANCHOR_SYNC_SECONDS: a power loss in between leaves an
anchor behind its log, which the next start catches up (the records chain onto it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from arc_common.batch import Batcher
from arc_common.digest import params_digest
from arc_common.keys import load_key, secrets_dir
from arc_common.models import AuditRecord, DecisionOutcome, Tool
from arc_common.sqlite import connect_sync
from services.governance.audit_anchors import ANCHOR_SYNC_SECONDS, AnchorFiles
from services.governance.audit_chain import against_anchors, check_at_open, move_legacy, walk
from services.governance.audit_records import (
    GENESIS_HASH,
    INSERT,
    META,
    SCHEMA,
    Anchor,
    AuditFilter,
    AuditRow,
    VerifyResult,
    canonical_json,
    filter_query,
)

__all__ = [
    "ANCHOR_SYNC_SECONDS",
    "SCHEMA",
    "AuditFilter",
    "AuditLog",
    "AuditRow",
    "VerifyResult",
    "canonical_json",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# How long a group about to be written waits for records callers have announced
# (``expecting``) but not yet chained: PostgreSQL's commit_delay, taken only when there are
# such siblings, so a lone caller never waits.
GROUP_WAIT_SECONDS = 0.002
# A group is committed on the event loop's thread while commits take less than this (a
# local SSD's fsync, even on a busy machine): the hop to the writer thread and back costs
# the loop more CPU than such a commit blocks it. A slower disk's commits go to the
# thread, so that the loop keeps deciding meanwhile.
INLINE_COMMIT_SECONDS = 0.005

KeySource = bytes | Callable[[], bytes] | None


class AuditLog:
    """The log in a SQLite file of its own (``audit.sqlite3``) with a writer thread of its
    own: one hop per group (its transaction and its anchor write, both fsync'd, which leave
    the loop free), not one per statement. Reads (verify, list, export) run on connections
    of their own in a thread."""

    def __init__(
        self,
        path: Path,
        anchor_path: Path,
        *,
        key: KeySource = None,
        second_anchor: Path | None = None,
        legacy: Path | None = None,
    ) -> None:
        """``key``: the chain's key, or how to load it when the log opens; None: an unkeyed
        chain (benchmarks)."""
        self._path = path
        self._key_source = key
        self._key: bytes | None = None
        self._keyed_from = 1
        self._legacy = legacy  # a database that still holds an ``audit`` table: moved once
        # Why the log cannot be trusted, found at open (empty: nothing found).
        self.break_reason = ""
        # Records up to here were verified (sequence, hash); newer ones are checked next.
        self._verified = (0, GENESIS_HASH)
        self._db: sqlite3.Connection | None = None
        self._head_sequence = 0
        self._head_hash = GENESIS_HASH
        self._durable_sequence = 0  # committed and anchored up to here
        # Chained records go to the disk in groups: a group waits for announced siblings.
        self._groups: Batcher[AuditRow] = Batcher.on_loop(
            self._write_group,
            name="audit",
            max_delay=GROUP_WAIT_SECONDS,
            linger_if=lambda: self._expected > 0,
            requeue_failed=True,  # still chained: they go with the next group
        )
        self._last: asyncio.Future[None] | None = None  # done once the head record is
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        # Held from a group's commit to its anchor write, and by a reader while it takes its
        # snapshot and reads the anchor: the two always agree.
        self._anchor_lock = threading.Lock()
        self._anchors = AnchorFiles(
            [anchor_path] + ([second_anchor] if second_anchor else []), self._thread
        )
        self._expected = 0  # records announced by callers still deciding them
        self._inline = True  # the last commit was fast: commit on the loop's thread
        self.commits = 0

    @classmethod
    def for_workspace(cls, home: Path) -> AuditLog:
        """The workspace's log: in governance's folder, keyed with its ``audit`` key, one
        anchor beside it and one in the secrets directory."""
        folder = home / "governance"
        return cls(
            folder / "audit.sqlite3",
            folder / "audit_anchor.json",
            key=lambda: load_key(home, "audit"),
            second_anchor=secrets_dir(home) / "audit_anchor.json",
            legacy=folder / "governance.sqlite3",
        )

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("audit log is not open")
        return self._db

    def _meta(self, db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def _key_for(self, sequence: int) -> bytes | None:
        return self._key if sequence >= self._keyed_from else None

    async def open(self) -> None:
        source = self._key_source
        self._key = source() if callable(source) else source
        self._db = db = connect_sync(self._path)  # written only by the writer thread
        db.row_factory = sqlite3.Row
        db.executescript(SCHEMA)
        if self._legacy is not None:  # a database that still holds an ``audit`` table
            move_legacy(db, self._legacy, self._path)
        row = db.execute(
            "SELECT sequence, hash FROM audit ORDER BY sequence DESC LIMIT 1"
        ).fetchone()
        if row is not None:
            self._head_sequence, self._head_hash = int(row["sequence"]), str(row["hash"])
        stored = self._meta(db, "anchor")
        anchors = {
            "database": Anchor.decode(stored) if stored is not None else None,
            **self._anchors.read(),
        }
        found = check_at_open(
            db,
            head=(self._head_sequence, self._head_hash),
            anchors=anchors,
            keyed_from=self._meta(db, "keyed_from"),
            keyed=self._key is not None,
        )
        self._keyed_from = found.keyed_from
        self._head_sequence, self._head_hash = found.head
        problems = found.problems
        verified = self._meta(db, "verified")
        if verified is not None:
            mark = Anchor.decode(verified)
            self._verified = (mark.count, mark.head_hash)
        if problems:
            self.break_reason = "; ".join(problems)
            logger.error("audit log broken: %s", self.break_reason)
        # Every anchor now says where the log is (the break, if any, is recorded by the
        # caller): a crash between a group's commit and its anchor writes is caught up.
        self._set_anchors(db)
        self._durable_sequence = self._head_sequence

    def _set_anchors(self, db: sqlite3.Connection) -> None:
        anchor = Anchor(self._head_sequence, self._head_hash, self._keyed_from)
        with self._anchor_lock:
            db.execute("BEGIN IMMEDIATE")
            db.execute(META, ("keyed_from", str(self._keyed_from)))
            db.execute(META, ("anchor", anchor.encode()))
            db.execute(META, ("verified", Anchor(*self._verified).encode()))
            db.execute("COMMIT")
            self._anchors.write(anchor)

    async def close(self) -> None:
        try:
            if self._db is not None:
                await self.durable()
        finally:  # a failed last commit is raised, but the files are still closed
            await self._anchors.stop_syncing()
            self._thread.shutdown(wait=True)
            if self._db is not None:
                self._db.close()
                self._db = None
            self._anchors.close()

    def append_nowait(
        self,
        *,
        caller: str,
        action: str,
        tool: Tool | None = None,
        parameters: Any = None,
        decision: DecisionOutcome | None = None,
        outcome: str = "",
        policy_version: str = "",
        detail: str = "",
    ) -> AuditRow:
        """Chain a record onto the log at once, in call order. It reaches the disk with the
        next group commit: ``await durable()`` before acting on it."""
        row = AuditRow(
            sequence=self._head_sequence + 1,
            time=datetime.now(UTC).isoformat(timespec="microseconds"),
            caller=caller,
            tool=tool.value if tool else "",
            parameters_digest=params_digest(parameters) if parameters is not None else "",
            decision=decision.value if decision else "",
            outcome=outcome,
            policy_version=policy_version,
            action=action,
            detail=detail,
            previous_hash=self._head_hash,
        )
        row.hash = row.compute_hash(self._key_for(row.sequence))
        self._last = self._groups.post(row)
        self._head_sequence, self._head_hash = row.sequence, row.hash
        return row

    async def append(self, **fields: Any) -> AuditRow:
        """Chain a record and return once it is committed and anchored (with the records
        of every caller that arrived meanwhile: one commit, one anchor write)."""
        record = self.append_nowait(**fields)
        await self.durable()
        return record

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce a record this caller is about to chain (a decision being made). While
        any is announced, a group about to be written waits for them (at most
        GROUP_WAIT_SECONDS), so that concurrent callers share one commit and one anchor
        write instead of taking one each: fewer, fuller groups under load."""
        self._expected += 1
        try:
            yield
        finally:
            self._expected -= 1
            if self._expected == 0 and self._groups.pending:
                self._groups.hurry()  # the group waiting for siblings has them all

    def is_durable(self) -> bool:
        """Whether every record chained so far is committed and anchored."""
        return self._durable_sequence >= self._head_sequence

    async def durable(self) -> None:
        """Returns once every record chained before the call is committed and anchored.
        Group commit: one group is on its way to the disk at a time; the records chained
        meanwhile all go with the next one (one transaction, one anchor write)."""
        target = self._head_sequence
        while self._durable_sequence < target:
            last = self._last
            if last is None or last.done():
                # Its group failed (the caller heard): this writes the kept records again.
                await self._groups.flush()
            else:
                await asyncio.shield(last)

    async def _write_group(self, rows: list[AuditRow]) -> None:
        began = time.monotonic()
        if self._inline:
            self._write(rows)
        else:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._write, rows)
        self._inline = time.monotonic() - began < INLINE_COMMIT_SECONDS
        self._durable_sequence = rows[-1].sequence
        self._anchors.sync_soon()

    def _write(self, rows: list[AuditRow]) -> None:
        """Commit the group, then anchor its last record (fsync'd soon after)."""
        db = self.db
        with self._anchor_lock:
            anchor = Anchor(rows[-1].sequence, rows[-1].hash, self._keyed_from)
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(INSERT, [row.values() for row in rows])
                db.execute(META, ("anchor", anchor.encode()))
                db.execute(META, ("verified", Anchor(*self._verified).encode()))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self.commits += 1
            self._anchors.write(anchor, sync=False)

    async def _read(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run a read on a connection of its own, in a thread, once every record chained
        before the call is on disk."""
        await self.durable()

        def run() -> _T:
            db = sqlite3.connect(self._path)
            db.row_factory = sqlite3.Row
            try:
                return query(db)
            finally:
                db.close()

        return await asyncio.to_thread(run)

    async def verify(self) -> VerifyResult:
        """The whole chain, against every anchor."""
        return await self._read(lambda db: self._verify(db, (0, GENESIS_HASH)))

    async def verify_new(self) -> VerifyResult:
        """Only the records after the last verified one (at start and on a timer), against
        every anchor; moves the verified mark on when they hold."""
        result = await self._read(lambda db: self._verify(db, self._verified))
        if result.ok and result.records_checked >= self._verified[0]:
            self._verified = (result.records_checked, result.head_hash)
        return result

    async def accept_head(self) -> None:
        """An operator acknowledged a break: verification goes on from the current head,
        and every anchor says where the log is now (the break stays in the history for a
        full ``verify``)."""
        await self.durable()
        self._verified = (self._head_sequence, self._head_hash)
        self.break_reason = ""
        self._set_anchors(self.db)  # on the loop: never beside an inline group write

    def _verify(self, db: sqlite3.Connection, start: tuple[int, str]) -> VerifyResult:
        with self._anchor_lock:  # the snapshot and the anchors of the same commit
            db.execute("BEGIN")
            last = db.execute("SELECT MAX(sequence) AS last FROM audit").fetchone()["last"] or 0
            stored = db.execute("SELECT value FROM meta WHERE key = 'anchor'").fetchone()
            anchors = {
                "database": Anchor.decode(str(stored["value"])) if stored else None,
                **self._anchors.read(),
            }
        try:
            walked = walk(db, start, self._key_for)
        finally:
            db.execute("COMMIT")
        if isinstance(walked, VerifyResult):
            return walked
        count, head = walked
        return against_anchors(
            count, head, last=last, start=start[0], anchors=anchors, keyed_from=self._keyed_from
        )

    async def list(
        self, flt: AuditFilter, *, offset: int, limit: int
    ) -> tuple[list[AuditRecord], bool]:
        query, args = filter_query(flt, offset=offset, limit=limit + 1)
        raws = await self._read(lambda db: db.execute(query, args).fetchall())
        rows = [AuditRow.from_row(raw) for raw in raws]
        return [r.to_model() for r in rows[:limit]], len(rows) > limit

    async def export_jsonl(self, path: Path, flt: AuditFilter | None = None) -> int:
        """Every matching record as one JSON object per line; returns the count."""
        count = 0
        offset = 0
        with path.open("w") as handle:
            while True:
                records, more = await self.list(flt or AuditFilter(), offset=offset, limit=1000)
                for record in records:
                    handle.write(record.model_dump_json() + "\n")
                count += len(records)
                offset += len(records)
                if not more:
                    return count
