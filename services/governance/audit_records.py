"""The audit log's format: its schema, a record and its keyed hash, an anchor, a filter.

The SQL the log runs lives in ``audit.py`` and ``audit_chain.py``; this is what both share.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from arc_common.models import AuditRecord, DecisionOutcome, Tool

GENESIS_HASH = "0" * 64
ANCHOR_BYTES = 512

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
META = "INSERT OR REPLACE INTO meta VALUES (?, ?)"

FIELDS = (
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


INSERT = f"INSERT INTO audit ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})"


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

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AuditRow:
        """A row read with its columns named (sqlite3.Row)."""
        return cls(**{name: row[name] for name in FIELDS})

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in FIELDS)

    def compute_hash(self, key: bytes | None = None) -> str:
        """HMAC-SHA256 under ``key``; plain SHA-256 for a record of before the key."""
        body = {name: getattr(self, name) for name in FIELDS[:-1]}
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
    newest_first: bool = False


def filter_query(flt: AuditFilter, *, offset: int, limit: int) -> tuple[str, tuple[Any, ...]]:
    """The SELECT of the records ``flt`` matches, a page of them."""
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
    order = "DESC" if flt.newest_first else "ASC"
    query = (
        f"SELECT {', '.join(FIELDS)} FROM audit {where} ORDER BY sequence {order} LIMIT ? OFFSET ?"
    )
    return query, (*args, limit, offset)
