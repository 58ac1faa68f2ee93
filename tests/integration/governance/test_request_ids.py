"""The mutating RPCs honour request_id through the real servicer: a replay (same caller,
same body) gets the first answer, another body under the id is ALREADY_EXISTS, another
caller's id is its own, and the answers outlive a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc import aio

from arc.governance.v1 import governance_pb2 as gpb
from arc.governance.v1 import governance_pb2_grpc
from arc_common.auth import Role, TokenStore
from arc_common.channel import create_channel
from arc_common.server import ServerHandle
from services.governance import __main__ as governance_main
from services.governance.settings import GovernanceSettings

POLICY = """
version: ids
tools:
  manage_checkpoints: {}
"""


Stub = governance_pb2_grpc.GovernanceServiceStub


@dataclass
class Governance:
    home: Path
    tokens: TokenStore
    handle: ServerHandle | None = None
    channels: list[aio.Channel] = field(default_factory=list)

    async def start(self) -> None:
        settings = GovernanceSettings(home=self.home, port=0)
        self.handle = await governance_main.start(settings, self.tokens)

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        self.channels.clear()
        if self.handle is not None:
            await self.handle.stop(0)
            self.handle = None

    def stub(self, role: Role) -> Stub:
        assert self.handle is not None
        channel = create_channel(
            f"127.0.0.1:{self.handle.port}", token=self.tokens.token_for(role), default_timeout=15
        )
        self.channels.append(channel)
        return governance_pb2_grpc.GovernanceServiceStub(channel)


@pytest.fixture
async def governance(tmp_path: Path) -> AsyncIterator[Governance]:
    home = tmp_path / "ws"
    home.mkdir()
    (home / "policy.yaml").write_text(POLICY)
    (home / "work").mkdir()
    service = Governance(home, TokenStore.ensure(home))
    await service.start()
    yield service
    await service.stop()


async def already_exists(call: Awaitable[object]) -> str:
    with pytest.raises(aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    details = info.value.details() or ""
    assert "request_id" in details
    return details


async def audited(stub: Stub, action: str) -> int:
    reply = await stub.ListAuditRecords(gpb.ListAuditRecordsRequest(page_size=1000))
    return sum(1 for record in reply.records if record.action == action)


async def test_set_mode_replays_its_first_answer(governance: Governance) -> None:
    operator = governance.stub(Role.OPERATOR)
    lock = gpb.SetModeRequest(request_id="m1", mode=gpb.MODE_LOCKED, reason="drill")
    first = await operator.SetMode(lock)
    assert first.previous_mode == gpb.MODE_AUTONOMOUS
    again = await operator.SetMode(lock)
    assert again == first  # not "LOCKED -> LOCKED": the first answer
    assert await audited(operator, "set_mode") == 1
    await already_exists(
        operator.SetMode(gpb.SetModeRequest(request_id="m1", mode=gpb.MODE_SUPERVISED))
    )
    assert (await operator.GetMode(gpb.GetModeRequest())).mode == gpb.MODE_LOCKED

    # Without a request id every call runs.
    plain = gpb.SetModeRequest(mode=gpb.MODE_AUTONOMOUS)
    assert (await operator.SetMode(plain)).previous_mode == gpb.MODE_LOCKED
    assert (await operator.SetMode(plain)).previous_mode == gpb.MODE_AUTONOMOUS

    # The ledger is in governance's database: a restart keeps the first answer.
    await governance.stop()
    await governance.start()
    operator = governance.stub(Role.OPERATOR)
    assert await operator.SetMode(lock) == first
    assert (await operator.GetMode(gpb.GetModeRequest())).mode == gpb.MODE_AUTONOMOUS


async def pending_request(governance: Governance) -> str:
    operator = governance.stub(Role.OPERATOR)
    await operator.SetMode(gpb.SetModeRequest(mode=gpb.MODE_SUPERVISED))
    agent = governance.stub(Role.AGENT)
    decision = (
        await agent.ValidateToolRequest(
            gpb.ValidateToolRequestRequest(tool=gpb.TOOL_MANAGE_CHECKPOINTS, request_id="v1")
        )
    ).decision
    assert decision.outcome == gpb.DECISION_OUTCOME_PENDING_APPROVAL
    return str(decision.pending_request_id)


async def test_approve_and_reject_replay_their_first_answer(governance: Governance) -> None:
    pending_id = await pending_request(governance)
    operator = governance.stub(Role.OPERATOR)
    approve = gpb.ApproveRequestRequest(request_id="a1", pending_request_id=pending_id, reason="ok")
    first = await operator.ApproveRequest(approve)
    assert first.pending_request.state == gpb.PENDING_REQUEST_STATE_APPROVED
    assert await operator.ApproveRequest(approve) == first
    assert await audited(operator, "approve") == 1
    await already_exists(
        operator.ApproveRequest(
            gpb.ApproveRequestRequest(
                request_id="a1", pending_request_id=pending_id, reason="other"
            )
        )
    )
    # Reject is another RPC: the id is not shared with Approve, the request is decided.
    with pytest.raises(aio.AioRpcError) as info:
        await operator.RejectRequest(
            gpb.RejectRequestRequest(request_id="a1", pending_request_id=pending_id)
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_reject_replays_its_first_answer(governance: Governance) -> None:
    pending_id = await pending_request(governance)
    operator = governance.stub(Role.OPERATOR)
    reject = gpb.RejectRequestRequest(request_id="r1", pending_request_id=pending_id, reason="no")
    first = await operator.RejectRequest(reject)
    assert first.pending_request.state == gpb.PENDING_REQUEST_STATE_REJECTED
    assert await operator.RejectRequest(reject) == first
    await already_exists(
        operator.RejectRequest(
            gpb.RejectRequestRequest(request_id="r1", pending_request_id=pending_id, reason="x")
        )
    )


async def begin(stub: Stub, request_id: str) -> str:
    reply = await stub.BeginTransaction(
        gpb.BeginTransactionRequest(
            request_id=request_id, tool=gpb.TOOL_MANAGE_CHECKPOINTS, paths=["work"]
        )
    )
    return str(reply.transaction.transaction_id)


async def test_commit_replays_and_an_id_belongs_to_its_caller(governance: Governance) -> None:
    service = governance.stub(Role.SERVICE)
    one, two = await begin(service, "b1"), await begin(service, "b2")
    commit = gpb.CommitTransactionRequest(request_id="c1", transaction_id=one, outcome="done")
    first = await service.CommitTransaction(commit)
    assert first.transaction.state == gpb.TRANSACTION_STATE_COMMITTED
    assert await service.CommitTransaction(commit) == first
    assert await audited(governance.stub(Role.OPERATOR), "commit_transaction") == 1
    details = await already_exists(
        service.CommitTransaction(gpb.CommitTransactionRequest(request_id="c1", transaction_id=two))
    )
    assert "different request" in details
    # The operator's "c1" is its own: it commits the other transaction.
    operator = governance.stub(Role.OPERATOR)
    other = await operator.CommitTransaction(
        gpb.CommitTransactionRequest(request_id="c1", transaction_id=two)
    )
    assert other.transaction.transaction_id == two
    assert other.transaction.state == gpb.TRANSACTION_STATE_COMMITTED


async def test_rollback_replays_its_counts(governance: Governance) -> None:
    service = governance.stub(Role.SERVICE)
    transaction_id = await begin(service, "b1")
    (governance.home / "work" / "new.txt").write_text("written inside the transaction")
    rollback = gpb.RollbackTransactionRequest(
        request_id="rb1", transaction_id=transaction_id, reason="tool failed"
    )
    first = await service.RollbackTransaction(rollback)
    assert (first.transaction.state, first.removed_files) == (
        gpb.TRANSACTION_STATE_ROLLED_BACK,
        1,
    )
    assert not (governance.home / "work" / "new.txt").exists()
    assert await service.RollbackTransaction(rollback) == first  # its counts, not zeros
    await already_exists(
        service.RollbackTransaction(
            gpb.RollbackTransactionRequest(
                request_id="rb1", transaction_id=transaction_id, reason="other"
            )
        )
    )
    with pytest.raises(aio.AioRpcError) as info:
        await service.RollbackTransaction(
            gpb.RollbackTransactionRequest(request_id="x" * 257, transaction_id=transaction_id)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in (info.value.details() or "")
