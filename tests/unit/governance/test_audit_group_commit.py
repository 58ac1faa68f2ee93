"""Group commit of the audit log: concurrent callers share commits and anchor writes, each
is answered only once its record is durable, and a crash between a group's commit and its
anchor is caught up at the next start (but a forged tail is not)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from arc_common.models import Mode, Tool
from services.governance import audit
from services.governance.audit import SCHEMA
from services.governance.core import ToolCall
from tests.unit.governance.test_governance_core import FakeClock, open_gov, training


@pytest.mark.parametrize("inline_below", [60.0, 0.0], ids=["fast", "slow"])
async def test_concurrent_validations_share_commits_and_all_are_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inline_below: float
) -> None:
    """On a fast disk groups commit on the loop's thread; on a slow one on the writer
    thread (here every commit counts as fast, then as slow). Either way every record is
    durable, and the anchor is fsync'd soon after."""
    monkeypatch.setattr(audit, "INLINE_COMMIT_SECONDS", inline_below)
    happened: list[str] = []
    real_fdatasync, real_write = os.fdatasync, audit.AuditLog._write

    def fdatasync(fd: int) -> None:
        happened.append("anchor fsync")
        real_fdatasync(fd)

    def write(log: audit.AuditLog, rows: list[audit.AuditRow]) -> None:
        happened.append("commit")
        real_write(log, rows)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(audit.AuditLog, "_write", write)
    gov = await open_gov(tmp_path / "ws", FakeClock())
    calls = [
        ToolCall(caller="agent", tool=Tool.RUN_TRAINING_JOB, parameters=training(), dry_run=True)
        for _ in range(60)
    ]
    decisions = await asyncio.gather(*(gov.validate(call) for call in calls))
    sequences = sorted(d.audit_sequence for d in decisions)
    assert sequences == list(range(sequences[0], sequences[0] + 60))  # one record each
    assert gov.log.commits < 60  # grouped: fewer commits than records
    anchor = json.loads((gov.home / "governance" / "audit_anchor.json").read_text())
    assert anchor["count"] == sequences[-1]
    result = await gov.log.verify()
    assert result.ok and result.records_checked == sequences[-1]
    assert gov.log._inline is (inline_below > 0)
    await asyncio.sleep(audit.ANCHOR_SYNC_SECONDS * 2)
    assert happened[-1] == "anchor fsync", happened  # the last commit's anchor is on disk
    since = happened[happened.index("commit") :]  # (opening the log wrote one first)
    assert since.count("commit") == gov.log.commits
    # At most one fsync per anchor file (next to the log, in the secrets dir) per commit.
    assert 2 <= since.count("anchor fsync") <= 2 * gov.log.commits
    await gov.close()


async def test_decisions_are_committed_before_the_answer(tmp_path: Path) -> None:
    clock = FakeClock()
    gov = await open_gov(tmp_path / "ws", clock)
    calls = [
        ToolCall(
            caller="agent",
            tool=Tool.RUN_TRAINING_JOB,
            parameters=training(hours=0.1),
            request_id=f"r{n}",
        )
        for n in range(10)
    ]
    decisions = await asyncio.gather(*(gov.validate(call) for call in calls))
    # Read through another connection: what was answered is on disk.
    with sqlite3.connect(gov.home / "governance" / "governance.sqlite3") as conn:
        stored = {row[0] for row in conn.execute("SELECT request_id FROM bound_decisions")}
    with sqlite3.connect(gov.home / "governance" / "audit.sqlite3") as conn:
        audited = conn.execute("SELECT COUNT(*) FROM audit WHERE action = 'validate'").fetchone()
    assert stored == {f"r{n}" for n in range(10)} and audited[0] == 10
    assert all(d.audit_sequence > 0 for d in decisions)
    await gov.close()


async def test_records_committed_but_not_anchored_are_caught_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    home = tmp_path / "ws"
    gov = await open_gov(home, clock)
    for n in range(3):
        await gov.log.append(caller="c", action="test", detail=f"anchored {n}")
    for n in range(5):  # committed, but the crash comes before the anchor
        gov.log.append_nowait(caller="c", action="test", detail=f"late {n}")
    with monkeypatch.context() as patch:
        patch.setattr(gov.log._anchors, "write", lambda anchor, **_: None)
        await gov.log.durable()
    await gov.close()
    anchor = json.loads((home / "governance" / "audit_anchor.json").read_text())
    assert anchor["count"] < 8 + 1

    again = await open_gov(home, clock)
    result = await again.log.verify()
    assert result.ok, result.reason
    anchor = json.loads((home / "governance" / "audit_anchor.json").read_text())
    assert anchor["count"] == result.records_checked
    await again.close()


async def test_a_tail_that_does_not_chain_to_the_anchor_is_a_break(tmp_path: Path) -> None:
    clock = FakeClock()
    home = tmp_path / "ws"
    gov = await open_gov(home, clock)
    for n in range(3):
        await gov.log.append(caller="c", action="test", detail=f"record {n}")
    count = (await gov.log.verify()).records_checked
    await gov.close()
    anchor_path = home / "governance" / "audit_anchor.json"
    # The anchor says fewer records, with a head that is not the hash of that record.
    anchor = json.loads(anchor_path.read_text())
    anchor_path.write_text(json.dumps({**anchor, "count": count - 1, "head_hash": "f" * 64}))
    again = await open_gov(home, clock)
    assert "does not match record" in again.audit_break
    assert again.mode is Mode.LOCKED
    await again.close()


async def test_a_log_kept_in_the_governance_database_moves_to_its_own_file(
    tmp_path: Path,
) -> None:
    """Workspaces from before the audit log had its own file: the same chain, verified,
    and no second copy left behind."""
    clock = FakeClock()
    home = tmp_path / "ws"
    folder = home / "governance"
    folder.mkdir(parents=True)
    # A log of before keys: plain SHA-256 links, an anchor without a key boundary.
    gov = audit.AuditLog(folder / "audit.sqlite3", folder / "audit_anchor.json")
    await gov.open()
    for n in range(6):
        await gov.append(caller="c", action="test", detail=f"record {n}")
    before = await gov.verify()
    await gov.close()
    (folder / "audit_anchor.json").write_text(
        json.dumps({"count": before.records_checked, "head_hash": before.head_hash})
    )
    with sqlite3.connect(folder / "governance.sqlite3") as old:  # the old layout
        old.executescript(SCHEMA)
        old.execute("ATTACH DATABASE ? AS moved", (str(folder / "audit.sqlite3"),))
        old.execute("INSERT INTO main.audit SELECT * FROM moved.audit")
        old.commit()
        old.execute("DETACH DATABASE moved")
    for suffix in ("", "-wal", "-shm"):
        (folder / f"audit.sqlite3{suffix}").unlink(missing_ok=True)

    again = await open_gov(home, clock)
    result = await again.log.verify()
    assert (result.ok, result.records_checked, result.head_hash) == (
        True,
        before.records_checked,
        before.head_hash,
    )
    record = await again.log.append(caller="c", action="test", detail="after the move")
    assert record.sequence == before.records_checked + 1 and (await again.log.verify()).ok
    await again.close()
    with sqlite3.connect(folder / "governance.sqlite3") as old:
        tables = {r[0] for r in old.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "audit" not in tables


async def test_a_group_waits_for_records_announced_but_a_lone_caller_does_not(
    tmp_path: Path,
) -> None:
    from services.governance.audit import GROUP_WAIT_SECONDS, AuditLog

    log = AuditLog(tmp_path / "audit.sqlite3", tmp_path / "anchor.json")
    await log.open()
    await log.append(caller="a", action="alone")  # nobody announced: written at once
    assert log.commits == 1

    with log.expecting():  # a sibling still deciding its record
        first = asyncio.ensure_future(log.append(caller="a", action="first"))
        await asyncio.sleep(GROUP_WAIT_SECONDS / 4)
        assert not first.done() and log.commits == 1  # the group waits for the sibling
        log.append_nowait(caller="b", action="second")
    await first
    await log.durable()
    assert log.commits == 2  # both records in one group

    with log.expecting():  # a sibling that never comes: the group waits a bounded time
        await asyncio.wait_for(log.append(caller="a", action="third"), GROUP_WAIT_SECONDS * 50)
    assert log.commits == 3
    assert (await log.verify()).ok
    await log.close()


async def test_no_commit_reaches_the_disk_before_the_audit_records_it_rests_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decision's rows wait for its record; so does any other commit on the connection
    (here a transaction's begin), which would otherwise carry the decision's rows along."""
    gov = await open_gov(tmp_path / "ws", FakeClock())
    (gov.home / "work").mkdir()
    entered, release = threading.Event(), threading.Event()
    real_write = audit.AuditLog._write

    def slow_write(log: audit.AuditLog, rows: list[audit.AuditRow]) -> None:
        entered.set()
        release.wait(30)
        real_write(log, rows)

    await gov.log.append(caller="c", action="test")  # a slow commit: the writer's thread
    monkeypatch.setattr(audit.AuditLog, "_write", slow_write)
    monkeypatch.setattr(gov.log, "_inline", False)
    waiting = 0
    both_wait = asyncio.Event()
    audit_first = gov.store._before_commit
    assert audit_first is not None

    async def counted() -> None:
        nonlocal waiting
        waiting += 1
        if waiting == 2:
            both_wait.set()
        await audit_first()

    monkeypatch.setattr(gov.store, "_before_commit", counted)

    def on_disk() -> set[str]:
        with sqlite3.connect(gov.home / "governance" / "governance.sqlite3") as conn:
            decided = {row[0] for row in conn.execute("SELECT request_id FROM bound_decisions")}
            opened = {row[0] for row in conn.execute("SELECT request_id FROM transactions")}
        return decided | opened

    decision = asyncio.ensure_future(
        gov.validate(
            ToolCall(caller="a", tool=Tool.MANAGE_CHECKPOINTS, parameters={}, request_id="d1")
        )
    )
    await asyncio.to_thread(entered.wait, 30)  # its record is on its way, not on disk
    begin = asyncio.ensure_future(
        gov.begin(caller="s", tool=Tool.MANAGE_CHECKPOINTS, paths=["work"], request_id="t1")
    )
    await asyncio.wait_for(both_wait.wait(), 30)  # the decision's commit and the begin's
    assert not decision.done() and not begin.done()
    assert on_disk() == set()
    release.set()
    assert (await decision).allowed
    await begin
    assert on_disk() == {"d1", "t1"}
    await gov.close()
