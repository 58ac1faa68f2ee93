"""Governance's core over its real SQLite store, with a fake clock."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from arc_common.errors import FailedPreconditionError, InvalidArgumentError, PermissionDeniedError
from arc_common.models import DecisionOutcome, Mode, PendingRequestState, Tool, TransactionState
from services.governance.audit import AuditFilter, AuditLog
from services.governance.core import Governance, GovernanceConfig, ToolCall
from services.governance.transactions import TransactionLimits

POLICY = """
version: t
callers:
  default: {gpu_hours_per_cycle: 3, max_concurrent_jobs: 5, calls_per_minute: 5}
tools:
  run_training_job:
    constraints:
      hyperparameters.optimizer.learning_rate: {min: 1.0e-5, max: 0.01}
  manage_checkpoints: {}
  preprocess_dataset: {}
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def open_gov(home: Path, clock: FakeClock) -> Governance:
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "policy.yaml").exists():
        (home / "policy.yaml").write_text(POLICY)
    gov = Governance(
        home,
        config=GovernanceConfig(
            pending_ttl_seconds=60, transactions=TransactionLimits(timeout_seconds=30)
        ),
        clock=clock,
    )
    await gov.open()
    return gov


@pytest.fixture
async def gov(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Governance]:
    governance = await open_gov(tmp_path / "ws", clock)
    yield governance
    await governance.close()


def training(hours: float = 1.0, lr: float = 0.001, gpus: int = 1) -> dict[str, Any]:
    return {
        "hyperparameters": {"optimizer": {"learning_rate": lr}},
        "max_training_time_seconds": int(hours * 3600 / gpus),
        "gpu_allocation": {"gpu_count": gpus},
    }


def call(params: dict[str, Any], **kw: Any) -> ToolCall:
    return ToolCall(
        caller=kw.pop("caller", "architect"),
        tool=kw.pop("tool", Tool.RUN_TRAINING_JOB),
        parameters=params,
        **kw,
    )


async def test_allowed_and_denied_with_suggestion(gov: Governance) -> None:
    assert (await gov.validate(call(training(), request_id="a"))).allowed
    denied = await gov.validate(call(training(lr=0.5), request_id="b"))
    assert denied.outcome is DecisionOutcome.DENIED
    assert [(v.field, v.suggested) for v in denied.violations] == [
        ("hyperparameters.optimizer.learning_rate", "0.01")
    ]
    assert denied.policy_version == gov.policy.version and denied.audit_sequence > 0


async def test_budget_counted_once_per_request_and_not_for_dry_runs(gov: Governance) -> None:
    for _ in range(3):
        assert (await gov.validate(call(training(hours=2), request_id="same"))).allowed
    assert (await gov.validate(call(training(hours=1), dry_run=True))).allowed
    denied = await gov.validate(call(training(hours=2), request_id="second"))
    assert not denied.allowed
    budget = denied.violations[0]
    assert budget.field == "max_training_time_seconds"
    assert "2.00 h used" in budget.constraint
    assert budget.suggested == "3600"  # the hour that is left
    other_cycle = await gov.validate(call(training(hours=2), request_id="c", cycle_id=2))
    assert other_cycle.allowed


async def test_rate_limit(gov: Governance) -> None:
    results = [
        await gov.validate(call({}, tool=Tool.MANAGE_CHECKPOINTS, request_id=f"r{n}"))
        for n in range(6)
    ]
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert results[-1].violations[0].field == "rate"


async def test_locked_denies_but_dry_run_answers(gov: Governance) -> None:
    await gov.set_mode(Mode.LOCKED, caller="op")
    decision = await gov.validate(call(training(), request_id="x"))
    assert decision.outcome is DecisionOutcome.DENIED and "LOCKED" in decision.reason
    dry = await gov.validate(call(training(), dry_run=True))
    assert dry.outcome is DecisionOutcome.DENIED
    with pytest.raises(PermissionDeniedError):
        await gov.begin(caller="svc", tool=Tool.MANAGE_CHECKPOINTS, paths=["runs"])


async def test_mode_survives_restart(tmp_path: Path, clock: FakeClock) -> None:
    gov = await open_gov(tmp_path / "ws", clock)
    await gov.set_mode(Mode.SUPERVISED, caller="op")
    await gov.close()
    gov = await open_gov(tmp_path / "ws", clock)
    assert gov.mode is Mode.SUPERVISED
    await gov.close()


@pytest.mark.parametrize("stored", ["", "bogus", "LOCKED "])
async def test_a_stored_mode_that_is_no_mode_starts_locked(
    tmp_path: Path, clock: FakeClock, stored: str
) -> None:
    gov = await open_gov(tmp_path / "ws", clock)
    await gov.close()
    with sqlite3.connect(gov.home / "governance" / "governance.sqlite3") as db:
        db.execute("INSERT OR REPLACE INTO state VALUES ('mode', ?)", (stored,))
    gov = await open_gov(tmp_path / "ws", clock)
    try:
        assert gov.mode is Mode.LOCKED
    finally:
        await gov.close()


async def test_supervised_approve_reject_expire(gov: Governance, clock: FakeClock) -> None:
    await gov.set_mode(Mode.SUPERVISED, caller="op")
    first = await gov.validate(call(training(), request_id="p1"))
    assert first.outcome is DecisionOutcome.PENDING_APPROVAL and first.requires_approval
    second = await gov.validate(call(training(), request_id="p2"))
    third = await gov.validate(call(training(), request_id="p3"))
    pending, _ = await gov.list_pending(offset=0, limit=10)
    assert [p.pending_request_id for p in pending] == [
        first.pending_request_id,
        second.pending_request_id,
        third.pending_request_id,
    ]
    approved = await gov.decide_pending(
        first.pending_request_id, approve=True, caller="op", reason="looks fine"
    )
    assert approved.state is PendingRequestState.APPROVED and approved.decided_by == "op"
    assert (await gov.validate(call(training(), request_id="p1"))).allowed
    await gov.decide_pending(second.pending_request_id, approve=False, caller="op", reason="no")
    rejected = await gov.validate(call(training(), request_id="p2"))
    assert rejected.outcome is DecisionOutcome.DENIED and "no" in rejected.reason
    with pytest.raises(FailedPreconditionError):
        await gov.decide_pending(second.pending_request_id, approve=True, caller="op", reason="")
    clock.now += 61
    assert await gov.expire_pending() == 1
    expired = await gov.validate(call(training(), request_id="p3"))
    assert expired.outcome is DecisionOutcome.DENIED and "expired" in expired.reason
    assert (await gov.list_pending(offset=0, limit=10))[0] == []


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


async def test_rollback_restores_modified_created_and_deleted(gov: Governance) -> None:
    home = gov.home
    ckpt = home / "runs" / "r1"
    ckpt.mkdir(parents=True)
    (ckpt / "best.pt").write_bytes(os.urandom(4096))
    (ckpt / "last.pt").write_bytes(b"last")
    (ckpt / "sub").mkdir()
    (ckpt / "sub" / "keep.txt").write_text("keep")
    (home / "notes.txt").write_text("before")
    before = tree(home / "runs"), (home / "notes.txt").read_text()

    txn = await gov.begin(
        caller="svc",
        tool=Tool.MANAGE_CHECKPOINTS,
        paths=["runs/r1", "notes.txt", "new_dir"],
        request_id="t1",
    )
    (ckpt / "best.pt").write_bytes(b"overwritten")
    (ckpt / "last.pt").unlink()
    (ckpt / "sub" / "keep.txt").unlink()
    (ckpt / "created.pt").write_bytes(b"new")
    (home / "notes.txt").write_text("after")
    (home / "new_dir").mkdir()
    (home / "new_dir" / "x").write_text("x")

    rolled, restored, removed = await gov.rollback(txn.transaction_id, caller="svc")
    assert rolled.state is TransactionState.ROLLED_BACK
    assert (tree(home / "runs"), (home / "notes.txt").read_text()) == before
    assert not (home / "new_dir").exists()
    assert restored == 4 and removed >= 2
    again, _, _ = await gov.rollback(txn.transaction_id, caller="svc")  # idempotent
    assert again.state is TransactionState.ROLLED_BACK
    with pytest.raises(FailedPreconditionError):
        await gov.commit(txn.transaction_id, caller="svc")


async def test_commit_keeps_changes(gov: Governance) -> None:
    (gov.home / "data").mkdir()
    txn = await gov.begin(caller="svc", tool=Tool.PREPROCESS_DATASET, paths=["data"])
    (gov.home / "data" / "out.png").write_bytes(b"png")
    committed = await gov.commit(txn.transaction_id, caller="svc")
    assert committed.state is TransactionState.COMMITTED
    assert (gov.home / "data" / "out.png").read_bytes() == b"png"


@pytest.mark.parametrize("path", ["../outside", "/etc", "governance", "governance/x", "link/x"])
async def test_transaction_paths_must_stay_inside(
    gov: Governance, tmp_path: Path, path: str
) -> None:
    (gov.home / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidArgumentError):
        await gov.begin(caller="svc", tool=Tool.MANAGE_CHECKPOINTS, paths=[path])


async def test_expired_and_startup_transactions_roll_back(tmp_path: Path, clock: FakeClock) -> None:
    gov = await open_gov(tmp_path / "ws", clock)
    target = gov.home / "work"
    target.mkdir()
    (target / "a").write_text("original")
    txn = await gov.begin(caller="svc", tool=Tool.MANAGE_CHECKPOINTS, paths=["work"])
    (target / "a").write_text("half-done")
    clock.now += 31
    assert await gov.recover_transactions() == 1
    assert (target / "a").read_text() == "original"
    assert (await gov.get_transaction(txn.transaction_id)).state is TransactionState.ROLLED_BACK

    txn2 = await gov.begin(caller="svc", tool=Tool.MANAGE_CHECKPOINTS, paths=["work"])
    (target / "b").write_text("partial")
    await gov.close()  # the service "dies" with the transaction open
    gov = await open_gov(tmp_path / "ws", clock)
    assert not (target / "b").exists()
    assert (await gov.get_transaction(txn2.transaction_id)).state is TransactionState.ROLLED_BACK
    assert (await gov.log.verify()).ok
    await gov.close()


async def filled_log(gov: Governance, count: int = 8) -> Path:
    for n in range(count):
        await gov.log.append(caller="c", action="test", detail=f"record {n}")
    result = await gov.log.verify()
    assert result.ok
    return gov.home / "governance" / "audit.sqlite3"


def tamper(db: Path, *statements: str) -> None:
    with sqlite3.connect(db) as conn:
        for statement in statements:
            conn.execute(statement)


async def test_tampering_detected_at_the_right_sequence(gov: Governance) -> None:
    db = await filled_log(gov)
    tamper(db, "UPDATE audit SET detail = 'record X' WHERE sequence = 3")
    result = await gov.log.verify()
    assert (result.ok, result.first_bad_sequence) == (False, 3)
    assert "altered" in result.reason


async def test_deleted_row_detected(gov: Governance) -> None:
    db = await filled_log(gov)
    tamper(db, "DELETE FROM audit WHERE sequence = 4")
    result = await gov.log.verify()
    assert (result.ok, result.first_bad_sequence) == (False, 4)


async def test_reordered_rows_detected(gov: Governance) -> None:
    db = await filled_log(gov)
    tamper(
        db,
        "UPDATE audit SET sequence = -5 WHERE sequence = 5",
        "UPDATE audit SET sequence = 5 WHERE sequence = 6",
        "UPDATE audit SET sequence = 6 WHERE sequence = -5",
    )
    result = await gov.log.verify()
    assert (result.ok, result.first_bad_sequence) == (False, 5)


async def test_inserted_row_detected(gov: Governance) -> None:
    db = await filled_log(gov)
    with sqlite3.connect(db) as conn:
        row = list(conn.execute("SELECT * FROM audit WHERE sequence = 2").fetchone())
        conn.execute("UPDATE audit SET sequence = sequence + 100 WHERE sequence >= 3")
        conn.execute("UPDATE audit SET sequence = sequence - 99 WHERE sequence >= 103")
        row[0] = 3
        row[9] = "forged"
        fake_hash = hashlib.sha256(b"forged").hexdigest()
        row[11] = fake_hash
        conn.execute(f"INSERT INTO audit VALUES ({', '.join('?' * len(row))})", row)
    result = await gov.log.verify()
    assert (result.ok, result.first_bad_sequence) == (False, 3)


async def test_truncated_tail_detected_against_anchor(gov: Governance) -> None:
    db = await filled_log(gov)
    count = (await gov.log.verify()).records_checked
    tamper(db, f"DELETE FROM audit WHERE sequence >= {count - 1}")
    result = await gov.log.verify()
    assert (result.ok, result.first_bad_sequence) == (False, count - 1)
    assert "truncated" in result.reason


async def test_export_jsonl(gov: Governance, tmp_path: Path) -> None:
    await filled_log(gov, 4)
    out = tmp_path / "audit.jsonl"
    count = await gov.log.export_jsonl(out)
    lines = out.read_text().splitlines()
    assert count == len(lines) >= 3
    assert '"sequence":1' in lines[0].replace(" ", "")


async def test_the_audit_log_is_the_one_it_is_given(tmp_path: Path, clock: FakeClock) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    (home / "policy.yaml").write_text(POLICY)
    given = AuditLog(tmp_path / "elsewhere.sqlite3", tmp_path / "elsewhere.json")
    gov = Governance(home, clock=clock, audit=given)
    await gov.open()
    try:
        decision = await gov.validate(call(training(), request_id="given"))
        records, _ = await given.list(AuditFilter(caller="architect"), offset=0, limit=10)
        assert [r.sequence for r in records] == [decision.audit_sequence]
        assert not (home / "governance" / "audit.sqlite3").exists()
    finally:
        await gov.close()


async def test_listing_checkpoints_is_never_held_for_approval(gov: Governance) -> None:
    """A read changes nothing: in SUPERVISED it is not queued for an operator (it would
    never succeed, and queued a request on every call); LOCKED refuses it still."""
    await gov.set_mode(Mode.SUPERVISED, caller="op")
    listing = {"action": "list", "checkpoint_dir": "runs/job-1", "run_id": ""}
    for _ in range(3):
        decision = await gov.validate(call(listing, tool=Tool.MANAGE_CHECKPOINTS))
        assert decision.allowed and decision.outcome is DecisionOutcome.ALLOWED
    assert (await gov.list_pending(offset=0, limit=10))[0] == []
    deleting = {"action": "delete", "path": "runs/job-1/checkpoints/last.pt"}
    held = await gov.validate(call(deleting, tool=Tool.MANAGE_CHECKPOINTS, request_id="d1"))
    assert held.outcome is DecisionOutcome.PENDING_APPROVAL
    await gov.set_mode(Mode.LOCKED, caller="op")
    locked = await gov.validate(call(listing, tool=Tool.MANAGE_CHECKPOINTS))
    assert locked.outcome is DecisionOutcome.DENIED
