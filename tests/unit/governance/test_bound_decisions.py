"""A decision is bound to the exact parameters, tool and asker it was made for."""

from __future__ import annotations

from typing import Any

import pytest

from arc_common.digest import params_digest
from arc_common.errors import FailedPreconditionError
from arc_common.models import AuditRecord, DecisionOutcome, Mode, Tool
from services.governance.audit import AuditFilter
from services.governance.core import Governance, ToolCall
from tests.unit.governance.test_governance_core import clock, gov, training

__all__ = ["clock", "gov"]  # fixtures used by name

EMPTY = {"repository": "code", "patch": ""}
OTHER = {"repository": "code", "patch": "--- a/model.py\n+++ b/model.py\n"}


def patch_call(params: dict[str, Any], **kw: Any) -> ToolCall:
    return ToolCall(
        caller="agent",
        tool=kw.pop("tool", Tool.MANAGE_CHECKPOINTS),
        parameters=params,
        request_id=kw.pop("request_id", "manage_checkpoints:seed1"),
        via=kw.pop("via", "service"),
        **kw,
    )


async def audit(gov: Governance, action: str) -> list[AuditRecord]:
    found, _ = await gov.log.list(AuditFilter(), offset=0, limit=1000)
    return [r for r in found if r.action == action]


async def test_same_parameters_replay_the_first_decision_with_a_record(gov: Governance) -> None:
    first = await gov.validate(patch_call(EMPTY))
    again = await gov.validate(patch_call(dict(EMPTY)))
    assert first.allowed and again.allowed
    assert again == first  # the first answer, audit_sequence included
    (replay,) = await audit(gov, "validate_replay")  # and a record of its own
    assert replay.parameters_digest == params_digest(EMPTY)
    assert replay.sequence > first.audit_sequence


async def test_other_parameters_under_the_same_id_are_refused_and_audited(
    gov: Governance,
) -> None:
    await gov.validate(patch_call(EMPTY))
    with pytest.raises(FailedPreconditionError) as info:
        await gov.validate(patch_call(OTHER))
    assert info.value.field == "request_id" and "manage_checkpoints:seed1" in str(info.value)
    (refused,) = await audit(gov, "validate_refused")
    assert refused.parameters_digest == params_digest(OTHER)
    with pytest.raises(FailedPreconditionError):  # nor for another tool
        await gov.validate(patch_call(EMPTY, tool=Tool.PREPROCESS_DATASET))


async def test_a_decision_an_agent_planted_is_not_the_executors(gov: Governance) -> None:
    planted = await gov.validate(patch_call(EMPTY, via="agent"))
    assert planted.allowed
    await gov.set_mode(Mode.SUPERVISED, caller="op")
    # The executor, asking for the agent under the same id, gets a decision of its own.
    executor = await gov.validate(patch_call(EMPTY, via="service"))
    assert executor.outcome is DecisionOutcome.PENDING_APPROVAL


async def test_locked_refuses_replays_and_is_not_bound(gov: Governance) -> None:
    assert (await gov.validate(patch_call(EMPTY))).allowed
    await gov.set_mode(Mode.LOCKED, caller="op")
    replay = await gov.validate(patch_call(EMPTY))
    assert replay.outcome is DecisionOutcome.DENIED and "LOCKED" in replay.reason
    fresh = await gov.validate(patch_call(EMPTY, request_id="new"))
    assert fresh.outcome is DecisionOutcome.DENIED
    await gov.set_mode(Mode.AUTONOMOUS, caller="op")
    assert (await gov.validate(patch_call(EMPTY, request_id="new"))).allowed
    assert (await gov.validate(patch_call(EMPTY))).allowed


async def test_an_approval_covers_only_the_parameters_approved(gov: Governance) -> None:
    await gov.set_mode(Mode.SUPERVISED, caller="op")
    asked = await gov.validate(patch_call(EMPTY, request_id="apply:1"))
    assert asked.outcome is DecisionOutcome.PENDING_APPROVAL
    await gov.decide_pending(asked.pending_request_id, approve=True, caller="op", reason="ok")
    assert (await gov.validate(patch_call(EMPTY, request_id="apply:1"))).allowed
    with pytest.raises(FailedPreconditionError):
        await gov.validate(patch_call(OTHER, request_id="apply:1"))


async def test_a_replay_is_not_charged_twice_and_ints_equal_floats(gov: Governance) -> None:
    params = training(hours=2)
    as_floats = {**params, "max_training_time_seconds": float(params["max_training_time_seconds"])}
    for body in (params, as_floats):  # a Struct carries every number as a double
        decision = await gov.validate(
            patch_call(body, tool=Tool.RUN_TRAINING_JOB, request_id="run:1")
        )
        assert decision.allowed
    assert await gov.budgets.used_gpu_hours("agent", 0) == pytest.approx(2.0)
