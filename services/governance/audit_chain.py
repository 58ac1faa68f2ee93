"""Checking the audit chain: at open, its head against the anchors; on verify, its
records one by one from a verified mark, then the anchors against the head they reach;
and moving a log out of an old database."""

from __future__ import annotations

import hmac
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.governance.audit_records import (
    FIELDS,
    GENESIS_HASH,
    Anchor,
    AuditRow,
    VerifyResult,
)

logger = logging.getLogger(__name__)

KeyFor = Callable[[int], bytes | None]

# Records a crash can leave committed but not yet anchored (those of the groups in flight).
MAX_UNANCHORED = 10_000


@dataclass(frozen=True)
class AtOpen:
    keyed_from: int  # the first record chained under the key
    head: tuple[int, str]  # where new records chain on (sequence, hash)
    problems: list[str]  # why the log cannot be trusted; empty: nothing found


def _chains_to(db: sqlite3.Connection, count: int, head: str) -> bool:
    if count == 0:
        return head == GENESIS_HASH
    row = db.execute("SELECT hash FROM audit WHERE sequence = ?", (count,)).fetchone()
    return row is not None and str(row["hash"]) == head


def check_at_open(
    db: sqlite3.Connection,
    *,
    head: tuple[int, str],
    anchors: dict[str, Anchor | None],
    keyed_from: str | None,
    keyed: bool,
) -> AtOpen:
    """The log's last record (``head``) against every anchor and the key boundary the
    database stores (None: never stored)."""
    problems: list[str] = []
    if keyed_from is None:
        # First open with a key: what is there already stays verifiable as plain
        # SHA-256, up to this boundary (kept in every anchor from now on).
        boundary = head[0] + 1 if keyed else 1 << 62
        if keyed and any(a and a.keyed_from for a in anchors.values()):
            problems.append("the database lost its key boundary, which an anchor records")
    else:
        boundary = int(keyed_from)
        for name, found in anchors.items():
            if found is None:
                problems.append(f"the {name} anchor is missing")
            elif found.keyed_from != boundary:
                problems.append(f"the {name} anchor records another key boundary")
    present = [a for a in anchors.values() if a is not None]
    longest = max(present, key=lambda a: a.count, default=None)
    for name, found in anchors.items():
        if found is None or found.count > head[0]:
            continue
        if found.count < 0 or not _chains_to(db, found.count, found.head_hash):
            problems.append(f"the {name} anchor does not match record {found.count}")
        elif head[0] > found.count + MAX_UNANCHORED:
            problems.append(f"the {name} anchor is {head[0] - found.count} behind")
    if longest is not None and longest.count > head[0]:
        # The tail was cut off. Keep chaining from the anchor so the gap stays visible.
        problems.append(f"log truncated: {head[0]} records, an anchor records {longest.count}")
        head = (longest.count, longest.head_hash)
    return AtOpen(boundary, head, problems)


def walk(
    db: sqlite3.Connection, start: tuple[int, str], key_for: KeyFor
) -> VerifyResult | tuple[int, str]:
    """The records after ``start`` (sequence, hash), each chained to the one before under
    its key: the first that is not, or the (count, head hash) they reach."""
    if start[0]:
        mark = db.execute("SELECT hash FROM audit WHERE rowid = ?", (start[0],)).fetchone()
        if mark is None or str(mark["hash"]) != start[1]:
            what = "is missing" if mark is None else "was altered"
            return VerifyResult(
                False, start[0] - 1, start[0], f"record {start[0]} {what} since verified"
            )
    expected, previous = start[0] + 1, start[1]
    for raw in db.execute(
        f"SELECT {', '.join(FIELDS)} FROM audit WHERE rowid > ? ORDER BY rowid", (start[0],)
    ):
        row = AuditRow.from_row(raw)
        problem = ""
        if row.sequence != expected:
            problem = (
                f"record {expected} is missing or out of order (found {row.sequence} in its place)"
            )
        elif row.previous_hash != previous:
            problem = f"record {row.sequence} does not chain to record {row.sequence - 1}"
        elif not hmac.compare_digest(row.compute_hash(key_for(row.sequence)), row.hash):
            problem = f"record {row.sequence} was altered (hash mismatch)"
        if problem:
            return VerifyResult(False, expected - 1, expected, problem)
        previous = row.hash
        expected += 1
    return expected - 1, previous


def against_anchors(
    count: int,
    head: str,
    *,
    last: int,
    start: int,
    anchors: dict[str, Anchor | None],
    keyed_from: int,
) -> VerifyResult:
    """A chain of ``count`` records ending in ``head`` (``last``: the highest sequence in
    the table) against every anchor, read in the same snapshot."""
    if last < start:
        return VerifyResult(
            False, last, last + 1, f"log truncated: {last} records, {start} were verified"
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
        if head != anchor.head_hash or anchor.keyed_from != keyed_from:
            return VerifyResult(False, count, count, f"the anchor {name} differs from the log")
    return VerifyResult(True, count, 0, "", head)


def move_legacy(db: sqlite3.Connection, legacy: Path, path: Path) -> None:
    """Workspaces made before the log had its own file keep it in the governance
    database: copy it over verbatim (the chain is unchanged), then drop it there. Two
    transactions, copy first: a crash between them leaves a copy to drop next time."""
    if not legacy.exists():
        return
    db.execute("ATTACH DATABASE ? AS legacy", (str(legacy),))
    try:
        found = db.execute(
            "SELECT 1 FROM legacy.sqlite_master WHERE type = 'table' AND name = 'audit'"
        ).fetchone()
        if found is None:
            return
        columns = ", ".join(FIELDS)
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM main.audit LIMIT 1").fetchone() is None:
                db.execute(
                    f"INSERT INTO main.audit ({columns}) "
                    f"SELECT {columns} FROM legacy.audit ORDER BY rowid"
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        moved = db.execute("SELECT COUNT(*) AS n FROM main.audit").fetchone()["n"]
        db.execute("DROP TABLE legacy.audit")
        logger.info("audit log moved to %s (%d records)", path, moved)
    finally:
        db.execute("DETACH DATABASE legacy")
