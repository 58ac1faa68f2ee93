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
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from arc_common.digest import params_digest
from arc_common.models import AuditRecord, DecisionOutcome, Tool
from arc_common.sqlite import connect_sync

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

GENESIS_HASH = "0" * 64
# Records a crash can leave committed but not yet anchored (those of the groups in flight).
MAX_UNANCHORED = 10_000
ANCHOR_BYTES = 512
# How long a group about to be written waits for records callers have announced
# (``expecting``) but not yet chained: PostgreSQL's commit_delay, taken only when there are
# such siblings, so a lone caller never waits.
GROUP_WAIT_SECONDS = 0.002
# A group is committed on the event loop's thread while commits take less than this (a
# local SSD's fsync, even on a busy machine): the hop to the writer thread and back cost
# more of the loop's CPU than such a commit blocks it (bench measure 8: 1.25 to 1.15). A
# slower disk's commits go to the thread, so that the loop keeps deciding meanwhile.
INLINE_COMMIT_SECONDS = 0.005
# The anchor is written after every commit and fsync'd at most this often, off the loop.
ANCHOR_SYNC_SECONDS = 0.1

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    sequence INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    caller TEXT NOT NULL,
    tool TEXT NOT NULL,
    parameters_digest TEXT NOT NULL,
    decision TEXT NOT NULL,
    outcome TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    previous_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_caller ON audit(caller);
CREATE INDEX IF NOT EXISTS audit_time ON audit(time);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_META = "INSERT OR REPLACE INTO meta VALUES (?, ?)"

_FIELDS = (
    "sequence",
    "time",
    "caller",
    "tool",
    "parameters_digest",
    "decision",
    "outcome",
    "policy_version",
    "action",
    "detail",
    "previous_hash",
    "hash",
)


_INSERT = f"INSERT INTO audit ({', '.join(_FIELDS)}) VALUES ({', '.join('?' * len(_FIELDS))})"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


@dataclass(slots=True)
class AuditRow:
    sequence: int
    time: str
    caller: str
    tool: str
    parameters_digest: str
    decision: str
    outcome: str
    policy_version: str
    action: str
    detail: str
    previous_hash: str
    hash: str = ""

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _FIELDS)

    def compute_hash(self, key: bytes | None = None) -> str:
        """HMAC-SHA256 under ``key``; plain SHA-256 for a record of before the key."""
        body = {name: getattr(self, name) for name in _FIELDS[:-1]}
        message = (self.previous_hash + canonical_json(body)).encode()
        if key is None:
            return hashlib.sha256(message).hexdigest()
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    def to_model(self) -> AuditRecord:
        return AuditRecord(
            sequence=self.sequence,
            time=datetime.fromisoformat(self.time),
            caller=self.caller,
            tool=Tool(self.tool) if self.tool else None,
            parameters_digest=self.parameters_digest,
            decision=DecisionOutcome(self.decision) if self.decision else None,
            outcome=self.outcome,
            previous_hash=self.previous_hash,
            hash=self.hash,
            policy_version=self.policy_version,
            action=self.action,
            detail=self.detail,
        )


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records_checked: int
    first_bad_sequence: int = 0
    reason: str = ""
    head_hash: str = ""


@dataclass(frozen=True)
class Anchor:
    count: int
    head_hash: str
    keyed_from: int = 0  # 0: an anchor of before the key

    def encode(self) -> str:
        return json.dumps(
            {"count": self.count, "head_hash": self.head_hash, "keyed_from": self.keyed_from}
        )

    @staticmethod
    def decode(text: str) -> Anchor:
        try:
            data = json.loads(text)
            return Anchor(
                int(data["count"]), str(data["head_hash"]), int(data.get("keyed_from", 0))
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return Anchor(-1, "")


@dataclass(frozen=True)
class AuditFilter:
    caller: str = ""
    tool: str = ""
    decision: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None


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
        key: bytes | None = None,
        second_anchor: Path | None = None,
        legacy: Path | None = None,
    ) -> None:
        self._path = path
        self._anchor_path = anchor_path
        self._second_anchor = second_anchor
        self._key = key  # None: an unkeyed chain (benchmarks)
        self._keyed_from = 1
        self._legacy = legacy  # a database that still holds an ``audit`` table: moved once
        # Why the log cannot be trusted, found at open (empty: nothing found).
        self.break_reason = ""
        # Records up to here were verified (sequence, hash); newer ones are checked next.
        self._verified = (0, GENESIS_HASH)
        self._db: sqlite3.Connection | None = None
        self._head_sequence = 0
        self._head_hash = GENESIS_HASH
        self._unwritten: list[AuditRow] = []  # chained, waiting for the next group commit
        self._durable_sequence = 0  # committed and anchored up to here
        self._next_group: asyncio.Future[None] | None = None  # for records not yet written
        self._in_flight: tuple[int, asyncio.Future[None]] | None = None  # (last, done)
        self._writer: asyncio.Future[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        # Held from a group's commit to its anchor write, and by a reader while it takes its
        # snapshot and reads the anchor: the two always agree.
        self._anchor_lock = threading.Lock()
        self._anchor_fds: dict[Path, int] = {}
        self._expected = 0  # records announced by callers still deciding them
        self._settled: asyncio.Future[None] | None = None  # resolved once none is expected
        self._inline = True  # the last commit was fast: commit on the loop's thread
        self._anchor_synced = 0.0  # monotonic time of the anchor's last fsync
        self._anchor_sync: asyncio.Future[None] | None = None
        self._anchor_dirty = False  # written since its last fsync
        self.commits = 0

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("audit log is not open")
        return self._db

    def _anchor_paths(self) -> list[Path]:
        return [self._anchor_path] + ([self._second_anchor] if self._second_anchor else [])

    def _meta(self, db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _key_for(self, sequence: int) -> bytes | None:
        return self._key if sequence >= self._keyed_from else None

    async def open(self) -> None:
        self._db = db = connect_sync(self._path)  # written only by the writer thread
        db.executescript(SCHEMA)
        self._move_legacy(db)
        row = db.execute(
            "SELECT sequence, hash FROM audit ORDER BY sequence DESC LIMIT 1"
        ).fetchone()
        if row is not None:
            self._head_sequence, self._head_hash = int(row[0]), str(row[1])
        stored = self._meta(db, "anchor")
        anchors = {
            "database": Anchor.decode(stored) if stored is not None else None,
            **{str(path): self.read_anchor(path) for path in self._anchor_paths()},
        }
        keyed_from = self._meta(db, "keyed_from")
        problems: list[str] = []
        if keyed_from is None:
            # First open with a key: what is there already stays verifiable as plain
            # SHA-256, up to this boundary (kept in every anchor from now on).
            self._keyed_from = self._head_sequence + 1 if self._key is not None else 1 << 62
            if self._key is not None and any(a and a.keyed_from for a in anchors.values()):
                problems.append("the database lost its key boundary, which an anchor records")
        else:
            self._keyed_from = int(keyed_from)
            for name, found in anchors.items():
                if found is None:
                    problems.append(f"the {name} anchor is missing")
                elif found.keyed_from != self._keyed_from:
                    problems.append(f"the {name} anchor records another key boundary")
        present = [a for a in anchors.values() if a is not None]
        longest = max(present, key=lambda a: a.count, default=None)
        for name, found in anchors.items():
            if found is None or found.count > self._head_sequence:
                continue
            if found.count < 0 or not self._chains_to(found.count, found.head_hash):
                problems.append(f"the {name} anchor does not match record {found.count}")
            elif self._head_sequence > found.count + MAX_UNANCHORED:
                problems.append(f"the {name} anchor is {self._head_sequence - found.count} behind")
        if longest is not None and longest.count > self._head_sequence:
            # The tail was cut off. Keep chaining from the anchor so the gap stays visible.
            problems.append(
                f"log truncated: {self._head_sequence} records, an anchor records {longest.count}"
            )
            self._head_sequence, self._head_hash = longest.count, longest.head_hash
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
            db.execute(_META, ("keyed_from", str(self._keyed_from)))
            db.execute(_META, ("anchor", anchor.encode()))
            db.execute(_META, ("verified", Anchor(*self._verified).encode()))
            db.execute("COMMIT")
            self._write_anchors(anchor)

    def _move_legacy(self, db: sqlite3.Connection) -> None:
        """Workspaces made before the log had its own file keep it in the governance
        database: copy it over verbatim (the chain is unchanged), then drop it there. Two
        transactions, copy first: a crash between them leaves a copy to drop next time."""
        if self._legacy is None or not self._legacy.exists():
            return
        db.execute("ATTACH DATABASE ? AS legacy", (str(self._legacy),))
        try:
            found = db.execute(
                "SELECT 1 FROM legacy.sqlite_master WHERE type = 'table' AND name = 'audit'"
            ).fetchone()
            if found is None:
                return
            columns = ", ".join(_FIELDS)
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT COUNT(*) FROM main.audit").fetchone()[0] == 0:
                    db.execute(
                        f"INSERT INTO main.audit ({columns}) "
                        f"SELECT {columns} FROM legacy.audit ORDER BY rowid"
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            moved = db.execute("SELECT COUNT(*) FROM main.audit").fetchone()[0]
            db.execute("DROP TABLE legacy.audit")
            logger.info("audit log moved to %s (%d records)", self._path, moved)
        finally:
            db.execute("DETACH DATABASE legacy")

    def _chains_to(self, count: int, head: str) -> bool:
        if count == 0:
            return head == GENESIS_HASH
        row = self.db.execute("SELECT hash FROM audit WHERE sequence = ?", (count,)).fetchone()
        return row is not None and str(row[0]) == head

    def read_anchor(self, path: Path | None = None) -> Anchor | None:
        try:
            return Anchor.decode((path or self._anchor_path).read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            return Anchor(-1, "")

    def _write_anchors(self, anchor: Anchor, *, sync: bool = True) -> None:
        """Overwrite each anchor file in place: JSON padded to one 512-byte sector (a
        sector is written whole or not at all), then fdatasync unless ``sync`` is False (a
        group commit's anchor: ``_sync_anchor_soon``). No temporary file, no rename: the
        anchors are written once per group commit."""
        body = anchor.encode().encode().ljust(ANCHOR_BYTES)
        for path in self._anchor_paths():
            fd = self._anchor_fds.get(path)
            if fd is None:
                fd = self._anchor_fds[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.pwrite(fd, body, 0)
            if os.fstat(fd).st_size != ANCHOR_BYTES:
                os.ftruncate(fd, ANCHOR_BYTES)  # an anchor written otherwise
                os.fsync(fd)
            elif sync:
                os.fdatasync(fd)

    def _sync_anchor_soon(self) -> None:
        """fsync the anchor on the writer thread, at most every ANCHOR_SYNC_SECONDS and one
        at a time: a power loss can leave it that far behind its log, never ahead."""
        self._anchor_dirty = True
        if self._anchor_sync is None or self._anchor_sync.done():
            self._anchor_sync = asyncio.ensure_future(self._sync_anchor())

    async def _sync_anchor(self) -> None:
        loop = asyncio.get_running_loop()
        while self._anchor_dirty:  # a commit during a sync: one more after it
            await asyncio.sleep(
                max(0.0, self._anchor_synced + ANCHOR_SYNC_SECONDS - time.monotonic())
            )
            self._anchor_dirty = False
            self._anchor_synced = time.monotonic()
            for fd in list(self._anchor_fds.values()):  # close() shuts them after the thread
                await loop.run_in_executor(self._thread, os.fdatasync, fd)

    async def close(self) -> None:
        try:
            if self._db is not None:
                await self.durable()
        finally:  # a failed last commit is raised, but the files are still closed
            if self._anchor_sync is not None:
                self._anchor_sync.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._anchor_sync
            for fd in self._anchor_fds.values():
                os.fdatasync(fd)
            self._thread.shutdown(wait=True)
            if self._db is not None:
                self._db.close()
                self._db = None
            for fd in self._anchor_fds.values():
                os.close(fd)
            self._anchor_fds.clear()

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
        self._unwritten.append(row)
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
            settled = self._settled
            if self._expected == 0 and settled is not None and not settled.done():
                settled.set_result(None)

    def is_durable(self) -> bool:
        """Whether every record chained so far is committed and anchored."""
        return self._durable_sequence >= self._head_sequence

    async def durable(self) -> None:
        """Returns once every record chained before the call is committed and anchored.
        Group commit: one group is on its way to the disk at a time; the records chained
        meanwhile all go with the next one (one transaction, one anchor write)."""
        target = self._head_sequence
        while self._durable_sequence < target:
            if self._in_flight is not None and target <= self._in_flight[0]:
                waiter = self._in_flight[1]
            else:
                if self._next_group is None:
                    self._next_group = asyncio.get_running_loop().create_future()
                waiter = self._next_group
                if self._writer is None or self._writer.done():
                    self._writer = asyncio.ensure_future(self._write_groups())
            await asyncio.shield(waiter)

    async def _write_groups(self) -> None:
        loop = asyncio.get_running_loop()
        while self._unwritten:
            if self._expected:  # siblings still deciding: let their records join this group
                self._settled = loop.create_future()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settled, GROUP_WAIT_SECONDS)
                self._settled = None
            rows, self._unwritten = self._unwritten, []
            waiter = self._next_group or loop.create_future()
            self._next_group = None
            self._in_flight = (rows[-1].sequence, waiter)
            try:
                began = time.monotonic()
                if self._inline:
                    self._write(rows)
                else:
                    await loop.run_in_executor(self._thread, self._write, rows)
                self._inline = time.monotonic() - began < INLINE_COMMIT_SECONDS
            except Exception as exc:  # every caller of the group gets the error
                logger.exception("audit commit failed")
                self._unwritten[:0] = rows  # still chained: they go with the next commit
                waiter.set_exception(exc)
                waiter.exception()  # retrieved: a group nobody waits on is not an error
                return
            finally:
                self._in_flight = None
            self._durable_sequence = rows[-1].sequence
            waiter.set_result(None)
            self._sync_anchor_soon()

    def _write(self, rows: list[AuditRow]) -> None:
        """Commit the group, then anchor its last record (fsync'd soon after)."""
        db = self.db
        with self._anchor_lock:
            anchor = Anchor(rows[-1].sequence, rows[-1].hash, self._keyed_from)
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(_INSERT, [row.values() for row in rows])
                db.execute(_META, ("anchor", anchor.encode()))
                db.execute(_META, ("verified", Anchor(*self._verified).encode()))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self.commits += 1
            self._write_anchors(anchor, sync=False)

    async def _read(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run a read on a connection of its own, in a thread, once every record chained
        before the call is on disk."""
        await self.durable()

        def run() -> _T:
            db = sqlite3.connect(self._path)
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
            last = db.execute("SELECT MAX(sequence) FROM audit").fetchone()[0] or 0
            stored = db.execute("SELECT value FROM meta WHERE key = 'anchor'").fetchone()
            anchors = {
                "database": Anchor.decode(str(stored[0])) if stored else None,
                **{str(path): self.read_anchor(path) for path in self._anchor_paths()},
            }
        try:
            if start[0]:
                mark = db.execute("SELECT hash FROM audit WHERE rowid = ?", (start[0],)).fetchone()
                if mark is None or str(mark[0]) != start[1]:
                    what = "is missing" if mark is None else "was altered"
                    return VerifyResult(
                        False, start[0] - 1, start[0], f"record {start[0]} {what} since verified"
                    )
            expected, previous = start[0] + 1, start[1]
            for raw in db.execute(
                f"SELECT {', '.join(_FIELDS)} FROM audit WHERE rowid > ? ORDER BY rowid",
                (start[0],),
            ):
                row = AuditRow(*raw)
                problem = ""
                if row.sequence != expected:
                    problem = (
                        f"record {expected} is missing or out of order "
                        f"(found {row.sequence} in its place)"
                    )
                elif row.previous_hash != previous:
                    problem = f"record {row.sequence} does not chain to record {row.sequence - 1}"
                elif not hmac.compare_digest(
                    row.compute_hash(self._key_for(row.sequence)), row.hash
                ):
                    problem = f"record {row.sequence} was altered (hash mismatch)"
                if problem:
                    return VerifyResult(False, expected - 1, expected, problem)
                previous = row.hash
                expected += 1
        finally:
            db.execute("COMMIT")
        count = expected - 1
        if last < start[0]:
            return VerifyResult(
                False, last, last + 1, f"log truncated: {last} records, {start[0]} were verified"
            )
        for name, anchor in anchors.items():
            if anchor is None:
                return VerifyResult(False, count, count + 1, f"the anchor {name} is missing")
            if count < anchor.count:
                return VerifyResult(
                    False,
                    count,
                    count + 1,
                    f"log truncated: {count} records, the anchor {name} records {anchor.count}",
                )
            if count > anchor.count:
                return VerifyResult(
                    False,
                    count,
                    anchor.count + 1,
                    f"records after {anchor.count} were added outside the service",
                )
            if previous != anchor.head_hash or anchor.keyed_from != self._keyed_from:
                return VerifyResult(False, count, count, f"the anchor {name} differs from the log")
        return VerifyResult(True, count, 0, "", previous)

    async def list(
        self, flt: AuditFilter, *, offset: int, limit: int
    ) -> tuple[list[AuditRecord], bool]:
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("caller", flt.caller),
            ("tool", flt.tool),
            ("decision", flt.decision),
        ):
            if value:
                clauses.append(f"{column} = ?")
                args.append(value)
        if flt.start_time is not None:
            clauses.append("time >= ?")
            args.append(flt.start_time.astimezone(UTC).isoformat(timespec="microseconds"))
        if flt.end_time is not None:
            clauses.append("time < ?")
            args.append(flt.end_time.astimezone(UTC).isoformat(timespec="microseconds"))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT {', '.join(_FIELDS)} FROM audit {where} ORDER BY sequence LIMIT ? OFFSET ?"
        raws = await self._read(lambda db: db.execute(query, (*args, limit + 1, offset)).fetchall())
        rows = [AuditRow(*raw) for raw in raws]
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
