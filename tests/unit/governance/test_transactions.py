"""Transactions: a finished one is never handed out again; bounds; startup quarantine."""

from __future__ import annotations

import pytest

from arc_common.errors import FailedPreconditionError
from arc_common.models import Tool, TransactionState
from services.governance.core import Governance
from tests.unit.governance.test_governance_core import clock, gov

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
