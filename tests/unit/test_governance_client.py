"""The shared governance client against a scripted GovernanceService on a local port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio

from arc.governance.v1 import governance_pb2, governance_pb2_grpc
from arc_common.errors import (
    FailedPreconditionError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    Status,
)
from arc_common.governance_client import GovernanceClient
from arc_common.models import DecisionOutcome, Mode, PendingRequestState, Tool, TransactionState


class Scripted(governance_pb2_grpc.GovernanceServiceServicer):
    """Answers what a test sets and records every request it got."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.decision = governance_pb2.Decision(
            outcome=governance_pb2.DECISION_OUTCOME_ALLOWED, allowed=True, policy_version="p1"
        )
        self.transaction_state = governance_pb2.TRANSACTION_STATE_OPEN
        self.commit_error: grpc.StatusCode | None = None
        self.audit_pages = [[1, 2], [3]]

    async def ValidateToolRequest(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return governance_pb2.ValidateToolRequestResponse(decision=self.decision)

    async def BeginTransaction(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return governance_pb2.BeginTransactionResponse(
            transaction=governance_pb2.Transaction(
                transaction_id="t1", tool=request.tool, state=self.transaction_state
            )
        )

    async def CommitTransaction(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        if self.commit_error is not None:
            await context.abort(self.commit_error, "commit refused")
        return governance_pb2.CommitTransactionResponse(
            transaction=governance_pb2.Transaction(
                transaction_id=request.transaction_id,
                state=governance_pb2.TRANSACTION_STATE_COMMITTED,
            )
        )

    async def RollbackTransaction(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return governance_pb2.RollbackTransactionResponse(
            transaction=governance_pb2.Transaction(
                transaction_id=request.transaction_id,
                state=governance_pb2.TRANSACTION_STATE_ROLLED_BACK,
            ),
            restored_files=2,
        )

    async def GetMode(self, request: Any, context: Any) -> Any:
        return governance_pb2.GetModeResponse(
            mode=governance_pb2.MODE_LOCKED, policy_version="p1", locked_reason="chain broke"
        )

    async def SetMode(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return governance_pb2.SetModeResponse(
            mode=request.mode, previous_mode=governance_pb2.MODE_SUPERVISED
        )

    async def ApproveRequest(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no pending {request.pending_request_id}")

    async def RejectRequest(self, request: Any, context: Any) -> Any:
        return governance_pb2.RejectRequestResponse(
            pending_request=governance_pb2.PendingRequest(
                pending_request_id=request.pending_request_id,
                state=governance_pb2.PENDING_REQUEST_STATE_REJECTED,
                reason=request.reason,
            )
        )

    async def ListPendingRequests(self, request: Any, context: Any) -> Any:
        return governance_pb2.ListPendingRequestsResponse(
            pending_requests=[governance_pb2.PendingRequest(pending_request_id="p1")]
        )

    async def VerifyAuditLog(self, request: Any, context: Any) -> Any:
        return governance_pb2.VerifyAuditLogResponse(
            ok=False, records_checked=7, first_bad_sequence=5, reason="hash"
        )

    async def ListAuditRecords(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        page = int(request.page_token or 0)
        return governance_pb2.ListAuditRecordsResponse(
            records=[governance_pb2.AuditRecord(sequence=n) for n in self.audit_pages[page]],
            next_page_token=str(page + 1) if page + 1 < len(self.audit_pages) else "",
        )


@pytest.fixture
async def served() -> AsyncIterator[tuple[Scripted, GovernanceClient]]:
    server = aio.server()
    scripted = Scripted()
    governance_pb2_grpc.add_GovernanceServiceServicer_to_server(scripted, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield scripted, GovernanceClient(channel, timeout=10)
    finally:
        await channel.close()
        await server.stop(None)


async def test_validate_sends_the_call_and_returns_the_decision_model(
    served: tuple[Scripted, GovernanceClient],
) -> None:
    scripted, client = served
    decision = await client.validate(
        Tool.RUN_TRAINING_JOB,
        {"epochs": 3, "nested": {"lr": 0.1}},
        dry_run=True,
        request_id="r1",
        on_behalf_of="agent",
        cycle_id=4,
    )
    assert decision.outcome is DecisionOutcome.ALLOWED and decision.policy_version == "p1"
    sent = scripted.requests[-1]
    assert sent.tool == governance_pb2.TOOL_RUN_TRAINING_JOB
    assert (sent.request_id, sent.on_behalf_of, sent.cycle_id, sent.dry_run) == (
        "r1",
        "agent",
        4,
        True,
    )
    assert sent.parameters["nested"]["lr"] == 0.1


async def test_a_status_code_comes_back_as_the_domain_error_with_its_status(
    served: tuple[Scripted, GovernanceClient],
) -> None:
    _, client = served
    with pytest.raises(NotFoundError, match="no pending p9") as raised:
        await client.decide("p9", approve=True)
    assert raised.value.status is Status.NOT_FOUND
    assert raised.value.status == "NOT_FOUND"  # still compares as the code's name


async def test_check_turns_a_refusal_into_the_error_to_answer_with(
    served: tuple[Scripted, GovernanceClient],
) -> None:
    scripted, client = served
    allowed = await client.check(Tool.RUN_EVALUATION_JOB, {}, caller="agent", request_id="r2")
    assert allowed.allowed
    assert scripted.requests[-1].request_id == "run_evaluation_job:r2"
    scripted.decision = governance_pb2.Decision(
        outcome=governance_pb2.DECISION_OUTCOME_DENIED,
        violations=[
            governance_pb2.Violation(
                field="gpu_hours", constraint="<= 1", kind=governance_pb2.VIOLATION_KIND_BUDGET
            )
        ],
    )
    with pytest.raises(ResourceExhaustedError, match="gpu_hours"):
        await client.check(Tool.RUN_EVALUATION_JOB, {}, caller="agent", request_id="r3")
    scripted.decision = governance_pb2.Decision(
        outcome=governance_pb2.DECISION_OUTCOME_DENIED,
        violations=[governance_pb2.Violation(field="architecture", constraint="allowed")],
    )
    with pytest.raises(PermissionDeniedError, match="architecture"):
        await client.check(Tool.RUN_EVALUATION_JOB, {}, caller="agent", request_id="r4")
    scripted.decision = governance_pb2.Decision(
        outcome=governance_pb2.DECISION_OUTCOME_PENDING_APPROVAL, pending_request_id="p1"
    )
    with pytest.raises(FailedPreconditionError, match="pending request p1"):
        await client.check(Tool.RUN_EVALUATION_JOB, {}, caller="agent", request_id="r5")


async def test_a_transaction_commits_when_its_block_succeeds(
    served: tuple[Scripted, GovernanceClient],
) -> None:
    scripted, client = served
    async with client.transaction(
        Tool.APPLY_CODE_PATCH, ["a.py"], caller="agent", request_id="r6"
    ) as transaction_id:
        assert transaction_id == "t1"
    begin, commit = scripted.requests[-2:]
    assert begin.request_id == "txn:apply_code_patch:r6" and list(begin.paths) == ["a.py"]
    assert isinstance(commit, governance_pb2.CommitTransactionRequest)
    assert commit.transaction_id == "t1" and commit.outcome == "succeeded"


async def test_a_transaction_rolls_back_when_its_block_or_its_commit_fails(
    served: tuple[Scripted, GovernanceClient],
) -> None:
    scripted, client = served
    with pytest.raises(RuntimeError, match="tool broke"):
        async with client.transaction(Tool.APPLY_CODE_PATCH, [], caller="a", request_id=""):
            raise RuntimeError("tool broke")
    rollback = scripted.requests[-1]
    assert isinstance(rollback, governance_pb2.RollbackTransactionRequest)
    assert rollback.reason == "RuntimeError: tool broke"

    scripted.commit_error = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(Exception, match="commit refused") as raised:
        async with client.transaction(Tool.APPLY_CODE_PATCH, [], caller="a", request_id=""):
            pass
    assert getattr(raised.value, "status", None) is Status.UNAVAILABLE
    assert isinstance(scripted.requests[-1], governance_pb2.RollbackTransactionRequest)


async def test_a_transaction_that_is_not_open_runs_nothing(
    served: tuple[Scripted, GovernanceClient],
) -> None:
    scripted, client = served
    scripted.transaction_state = governance_pb2.TRANSACTION_STATE_COMMITTED
    ran = False
    with pytest.raises(FailedPreconditionError, match="not open"):
        async with client.transaction(Tool.APPLY_CODE_PATCH, [], caller="a", request_id="r"):
            ran = True
    assert not ran


async def test_rollback_reports_what_it_restored(
    served: tuple[Scripted, GovernanceClient],
) -> None:
    _, client = served
    rolled = await client.rollback("t1", reason="x" * 5000)
    assert rolled.transaction.state is TransactionState.ROLLED_BACK
    assert (rolled.restored_files, rolled.removed_files) == (2, 0)


async def test_mode_and_set_mode_speak_the_model_enum(
    served: tuple[Scripted, GovernanceClient],
) -> None:
    scripted, client = served
    status = await client.mode()
    assert (status.mode, status.policy_version, status.locked_reason) == (
        Mode.LOCKED,
        "p1",
        "chain broke",
    )
    previous = await client.set_mode(Mode.AUTONOMOUS, reason="ok", request_id="m1")
    assert previous is Mode.SUPERVISED
    assert scripted.requests[-1].mode == governance_pb2.MODE_AUTONOMOUS


async def test_audit_follows_pages_up_to_the_limit(
    served: tuple[Scripted, GovernanceClient],
) -> None:
    _, client = served
    records, token = await client.audit()
    assert [r.sequence for r in records] == [1, 2, 3] and token == ""
    records, token = await client.audit(limit=2)
    assert [r.sequence for r in records] == [1, 2] and token


async def test_pending_requests_decisions_and_the_audit_check(
    served: tuple[Scripted, GovernanceClient],
) -> None:
    _, client = served
    assert [p.pending_request_id for p in await client.pending()] == ["p1"]
    rejected = await client.decide("p1", approve=False, reason="no")
    assert rejected.state is PendingRequestState.REJECTED and rejected.reason == "no"
    check = await client.verify_audit()
    assert (check.ok, check.records_checked, check.first_bad_sequence) == (False, 7, 5)
