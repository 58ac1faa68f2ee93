"""Transactions: a finished one is never handed out again; bounds; startup quarantine."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from arc_common.decisions import denial_error
from arc_common.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from arc_common.models import DecisionOutcome, Mode, Tool, TransactionState
from services.governance.audit import AuditFilter
from services.governance.core import Governance
from tests.unit.governance.test_governance_core import (
    FakeClock,
    call,
    clock,
    gov,
    open_gov,
    training,
)

__all__ = ["clock", "gov"]  # fixtures used by name


async def test_a_retry_after_rollback_runs_in_a_new_transaction(gov: Governance) -> None:
    work = gov.home / "work"
    work.mkdir()
    (work / "a").write_text("original")
    first = await gov.begin(
        caller="svc", tool=Tool.MANAGE_CHECKPOINTS, paths=["work"], request_id="r"
    )
    lost_reply = await gov.begin(
        caller="svc", tool=Tool.MANAGE_CHECKPOINTS, paths=["work"], request_id="r"
    )
    assert lost_reply.transaction_id == first.transaction_id  # still open: the same one
    (work / "a").write_text("failed attempt")
    await gov.rollback(first.transaction_id, caller="svc", reason="tool failed")
    assert (work / "a").read_text() == "original"

    retry = await gov.begin(
        caller="svc", tool=Tool.MANAGE_CHECKPOINTS, paths=["work"], request_id="r"
    )
    assert retry.transaction_id != first.transaction_id
    assert retry.state is TransactionState.OPEN
    (work / "a").write_text("second failed attempt")
    (work / "b").write_text("created by the retry")
    _, restored, removed = await gov.rollback(retry.transaction_id, caller="svc")
    assert (work / "a").read_text() == "original" and not (work / "b").exists()
    assert (restored, removed) == (1, 1)
    with pytest.raises(FailedPreconditionError):
        await gov.commit(first.transaction_id, caller="svc")


async def test_a_committed_transaction_is_not_reopened_either(gov: Governance) -> None:
    (gov.home / "work").mkdir()
    first = await gov.begin(
        caller="svc", tool=Tool.MANAGE_CHECKPOINTS, paths=["work"], request_id="c"
    )
    await gov.commit(first.transaction_id, caller="svc")
    again = await gov.begin(
        caller="svc", tool=Tool.MANAGE_CHECKPOINTS, paths=["work"], request_id="c"
    )
    assert again.transaction_id != first.transaction_id and again.state is TransactionState.OPEN


@pytest.mark.parametrize("timeout", [-1, 86400 + 1, 2**63 - 1, float("inf"), float("nan")])
async def test_timeout_seconds_is_bounded(gov: Governance, timeout: float) -> None:
    (gov.home / "work").mkdir()
    with pytest.raises(InvalidArgumentError) as info:
        await gov.begin(
            caller="svc", tool=Tool.MANAGE_CHECKPOINTS, paths=["work"], timeout_seconds=timeout
        )
    assert info.value.field == "timeout_seconds"


async def test_a_row_that_cannot_be_rolled_back_is_quarantined_at_start(
    tmp_path: Path, clock: FakeClock
) -> None:
    gov = await open_gov(tmp_path / "ws", clock)
    (gov.home / "work").mkdir()
    (gov.home / "work" / "a").write_text("original")
    good = await gov.begin(caller="svc", tool=Tool.MANAGE_CHECKPOINTS, paths=["work"])
    (gov.home / "work" / "a").write_text("half-done")
    await gov.close()
    with sqlite3.connect(gov.home / "governance" / "governance.sqlite3") as db:
        db.execute(  # what BeginTransaction{timeout_seconds: 2^63-1} stored before bounds
            "INSERT INTO transactions VALUES ('hostile', 'r', 'manage_checkpoints', "
            "'[\"work\"]', 'open', 'svc', 1.0, ?)",
            (2**63 - 1,),
        )
        db.execute("INSERT OR REPLACE INTO state VALUES ('mode', 'bogus')")
    gov = await open_gov(tmp_path / "ws", clock)
    try:
        assert (gov.home / "work" / "a").read_text() == "original"  # the good one rolled back
        assert (
            await gov.get_transaction(good.transaction_id)
        ).state is TransactionState.ROLLED_BACK
        with pytest.raises(NotFoundError):
            await gov.get_transaction("hostile")
        async with gov.store.db.execute("SELECT kind, key, reason FROM quarantine") as cursor:
            rows = [tuple(row) async for row in cursor]
        assert rows == [("transaction", "hostile", rows[0][2])]
        assert "OverflowError" in rows[0][2]
        records, _ = await gov.log.list(AuditFilter(), offset=0, limit=1000)
        assert any(r.action == "quarantine_transaction" and "hostile" in r.detail for r in records)
        assert gov.mode is Mode.LOCKED  # an unreadable mode is the safest one
        assert (await gov.log.verify()).ok
    finally:
        await gov.close()


async def test_gpu_count_that_is_not_a_number_is_denied_not_internal(gov: Governance) -> None:
    for allocation, field in [
        ({"gpu_count": "abc"}, "gpu_allocation.gpu_count"),
        ({"gpu_count": float("nan")}, "gpu_allocation.gpu_count"),
        ({"gpu_count": 1e300}, "gpu_allocation.gpu_count"),
        ({"gpu_count": -4}, "gpu_allocation.gpu_count"),
        ({"gpu_indices": 7}, "gpu_allocation.gpu_indices"),
        ("x", "gpu_allocation"),
    ]:
        params = {**training(), "gpu_allocation": allocation}
        decision = await gov.validate(call(params, dry_run=True))
        assert decision.outcome is DecisionOutcome.DENIED, allocation
        assert field in [v.field for v in decision.violations], allocation
        assert isinstance(denial_error(Tool.RUN_TRAINING_JOB, decision), InvalidArgumentError)
    huge = await gov.validate(
        call({**training(), "max_training_time_seconds": 1e308}, dry_run=True)
    )
    assert [v.field for v in huge.violations] == ["max_training_time_seconds"]
