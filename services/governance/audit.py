"""The tamper-evident audit log: append-only rows in SQLite, chained by SHA-256.

hash(n) = SHA-256(previous_hash || canonical JSON of record n without its hash). Editing a
byte, deleting, reordering or inserting a row breaks the chain at that row's sequence
number. Truncating the tail leaves a valid chain, so the head hash and count are also
written to an anchor file after every commit; a log shorter than its anchor is truncated.
Records of concurrent callers share one commit and one anchor write (group commit); each
caller is answered only once its record is committed and anchored.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from arc_common.models import AuditRecord, DecisionOutcome, Tool

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# Records a crash can leave committed but not yet anchored (those of the groups in flight).
MAX_UNANCHORED = 10_000

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
"""

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


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


@dataclass(frozen=True)
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

    def compute_hash(self) -> str:
        body = {k: v for k, v in asdict(self).items() if k != "hash"}
        return hashlib.sha256((self.previous_hash + canonical_json(body)).encode()).hexdigest()

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
class AuditFilter:
    caller: str = ""
    tool: str = ""
    decision: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None


class AuditLog:
    def __init__(self, db: aiosqlite.Connection, anchor_path: Path) -> None:
        self._db = db
        self._anchor_path = anchor_path
        self._lock = asyncio.Lock()
        self._head_sequence = 0
        self._head_hash = GENESIS_HASH
        self._unwritten: list[AuditRow] = []  # chained, waiting for the next group commit
        self._committing: asyncio.Future[None] | None = None
        self._commits_begun = 0
        self._commits_done = 0

    async def open(self) -> None:
        await self._db.executescript(SCHEMA)
        await self._db.commit()
        async with self._db.execute(
            "SELECT sequence, hash FROM audit ORDER BY sequence DESC LIMIT 1"
        ) as cursor:
            row = await cursor.fetchone()
        if row is not None:
            self._head_sequence, self._head_hash = int(row[0]), str(row[1])
        anchor = self.read_anchor()
        if anchor is None:
            self._write_anchor(self._head_sequence, self._head_hash)
            return
        count, head = anchor
        if count < self._head_sequence <= count + MAX_UNANCHORED and await self._chains_to(
            count, head
        ):
            # A crash between a group's commit and its anchor: the records after the
            # anchor chain onto it, so catch the anchor up.
            self._write_anchor(self._head_sequence, self._head_hash)
        elif self._head_sequence < count:
            # The tail was cut off. Keep chaining from the anchor so the gap stays visible.
            logger.error(
                "audit log has %d records but its anchor records %d: tail truncated",
                self._head_sequence,
                count,
            )
            self._head_sequence, self._head_hash = count, head

    async def _chains_to(self, count: int, head: str) -> bool:
        if count == 0:
            return head == GENESIS_HASH
        async with self._db.execute("SELECT hash FROM audit WHERE sequence = ?", (count,)) as cur:
            row = await cur.fetchone()
        return row is not None and str(row[0]) == head

    def read_anchor(self) -> tuple[int, str] | None:
        try:
            data = json.loads(self._anchor_path.read_text())
            return int(data["count"]), str(data["head_hash"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return (-1, "")

    def _write_anchor(self, count: int, head: str) -> None:
        tmp = self._anchor_path.with_suffix(".tmp")
        with tmp.open("w") as handle:
            json.dump({"count": count, "head_hash": head}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self._anchor_path)

    async def append(
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
        wait: bool = True,
    ) -> AuditRecord:
        """Chain a record onto the log. With ``wait`` it returns once the record is
        committed and anchored; without, the caller must ``await durable()`` before it
        acts on the record (so that it can leave a lock first). The chain is extended at
        once, in call order; the rows reach the database with the next group commit."""
        # No await until the row is chained: the order of calls is the order of records.
        row = AuditRow(
            sequence=self._head_sequence + 1,
            time=datetime.now(UTC).isoformat(timespec="microseconds"),
            caller=caller,
            tool=tool.value if tool else "",
            parameters_digest=digest(parameters) if parameters is not None else "",
            decision=decision.value if decision else "",
            outcome=outcome,
            policy_version=policy_version,
            action=action,
            detail=detail,
            previous_hash=self._head_hash,
        )
        row = AuditRow(**{**asdict(row), "hash": row.compute_hash()})
        self._unwritten.append(row)
        self._head_sequence, self._head_hash = row.sequence, row.hash
        if wait:
            await self.durable()
        return row.to_model()

    async def durable(self) -> None:
        """Returns once a commit that began after this call has completed: every write made
        on the connection before the call (records, decisions, budgets) is then committed
        and every record anchored. Group commit: the callers that arrive while one commit
        is on its way share the next commit and the next anchor write."""
        ticket = self._commits_begun + 1
        while self._commits_done < ticket:
            if self._committing is None or self._committing.done():
                self._committing = asyncio.ensure_future(self._commit())
            await asyncio.shield(self._committing)

    async def _commit(self) -> None:
        async with self._lock:  # no record joins between the commit and its anchor
            self._commits_begun += 1
            number = self._commits_begun
            rows = list(self._unwritten)
            try:
                await self._db.executemany(
                    _INSERT, [tuple(asdict(row)[f] for f in _FIELDS) for row in rows]
                )
                await self._db.commit()
            except Exception:
                await self._db.rollback()  # the rows stay queued for the next commit
                raise
            del self._unwritten[: len(rows)]
            if rows:
                self._write_anchor(rows[-1].sequence, rows[-1].hash)
            self._commits_done = number

    async def verify(self) -> VerifyResult:
        async with self._lock:
            previous = GENESIS_HASH
            expected = 1
            async with self._db.execute(
                f"SELECT {', '.join(_FIELDS)} FROM audit ORDER BY rowid"
            ) as cursor:
                async for raw in cursor:
                    row = AuditRow(*raw)
                    if row.sequence != expected:
                        return VerifyResult(
                            False,
                            expected - 1,
                            expected,
                            f"record {expected} is missing or out of order "
                            f"(found {row.sequence} in its place)",
                        )
                    if row.previous_hash != previous:
                        return VerifyResult(
                            False,
                            expected - 1,
                            row.sequence,
                            f"record {row.sequence} does not chain to record {row.sequence - 1}",
                        )
                    if row.compute_hash() != row.hash:
                        return VerifyResult(
                            False,
                            expected - 1,
                            row.sequence,
                            f"record {row.sequence} was altered (hash mismatch)",
                        )
                    previous = row.hash
                    expected += 1
            count = expected - 1
            anchor = self.read_anchor()
            if anchor is not None:
                anchor_count, anchor_head = anchor
                if count < anchor_count:
                    return VerifyResult(
                        False,
                        count,
                        count + 1,
                        f"log truncated: {count} records, the anchor records {anchor_count}",
                    )
                if count > anchor_count:
                    return VerifyResult(
                        False,
                        count,
                        anchor_count + 1,
                        f"records after {anchor_count} were added outside the service",
                    )
                if previous != anchor_head:
                    return VerifyResult(False, count, count, "head hash differs from the anchor")
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
        async with self._db.execute(
            f"SELECT {', '.join(_FIELDS)} FROM audit {where} ORDER BY sequence LIMIT ? OFFSET ?",
            (*args, limit + 1, offset),
        ) as cursor:
            rows = [AuditRow(*raw) async for raw in cursor]
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
