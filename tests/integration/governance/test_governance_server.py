"""Governance through a real server process: roles, denials, approvals, reload, recovery."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from grpc import aio

from arc.governance.v1 import governance_pb2 as gpb
from arc.governance.v1 import governance_pb2_grpc
from arc_common.auth import Role, TokenStore
from tests.conftest import REPO_ROOT
from tests.helpers import ServiceProcess

POLICY = """
version: it
callers:
  default: {gpu_hours_per_cycle: 2, max_concurrent_jobs: 5, calls_per_minute: 1000}
tools:
  run_training_job:
    constraints:
      hyperparameters.optimizer.learning_rate: {min: 1.0e-5, max: 0.01}
      hyperparameters.batch_size: {min: 4, max: 128}
  manage_checkpoints: {}
"""

ENV = {
    "ARC_GOVERNANCE_HOUSEKEEPING_INTERVAL_SECONDS": "0.2",
    "ARC_GOVERNANCE_PENDING_TTL_SECONDS": "600",
}


class Client:
    def __init__(self, service: ServiceProcess) -> None:
        self.service = service
        self.channels: list[aio.Channel] = []

    def stub(self, role: Role | None) -> governance_pb2_grpc.GovernanceServiceStub:
        token = TokenStore.load(self.service.home).token_for(role) if role else None
        channel = self.service.channel(token)
        self.channels.append(channel)
        return governance_pb2_grpc.GovernanceServiceStub(channel)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        self.channels.clear()


@pytest.fixture
async def governance(tmp_path: Path) -> AsyncIterator[Client]:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "policy.yaml").write_text(POLICY)
    service = ServiceProcess("services.governance", tmp_path, env=ENV)
    await service.start()
    client = Client(service)
    yield client
    await client.close()
    service.kill()


def params(**values: Any) -> Struct:
    struct = Struct()
    struct.update(values)
    return struct


def training(lr: float = 0.001, batch: int = 32, seconds: int = 3600) -> Struct:
    return params(
        hyperparameters={"optimizer": {"learning_rate": lr}, "batch_size": batch},
        max_training_time_seconds=seconds,
    )


async def test_dry_run_returns_every_violation(governance: Client) -> None:
    reply = await governance.stub(Role.AGENT).ValidateToolRequest(
        gpb.ValidateToolRequestRequest(
            tool=gpb.TOOL_RUN_TRAINING_JOB, parameters=training(lr=0.3, batch=1000), dry_run=True
        )
    )
    decision = reply.decision
    assert decision.outcome == gpb.DECISION_OUTCOME_DENIED and not decision.allowed
    assert {(v.field, v.suggested) for v in decision.violations} == {
        ("hyperparameters.optimizer.learning_rate", "0.01"),
        ("hyperparameters.batch_size", "128"),
    }
    assert decision.policy_version.startswith("it+")


async def test_executing_a_denied_call_is_permission_denied(governance: Client) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await governance.stub(Role.AGENT).ValidateToolRequest(
            gpb.ValidateToolRequestRequest(
                tool=gpb.TOOL_RUN_TRAINING_JOB, parameters=training(lr=0.3), request_id="r1"
            )
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = info.value.details() or ""
    assert "hyperparameters.optimizer.learning_rate" in details and "try 0.01" in details
    records = await governance.stub(Role.OPERATOR).ListAuditRecords(
        gpb.ListAuditRecordsRequest(decision=gpb.DECISION_OUTCOME_DENIED, caller="agent")
    )
    assert [r.tool for r in records.records] == [gpb.TOOL_RUN_TRAINING_JOB]


async def test_budget_exhaustion_is_resource_exhausted(governance: Client) -> None:
    stub = governance.stub(Role.AGENT)
    ok = await stub.ValidateToolRequest(
        gpb.ValidateToolRequestRequest(
            tool=gpb.TOOL_RUN_TRAINING_JOB, parameters=training(seconds=5400), request_id="b1"
        )
    )
    assert ok.decision.allowed
    with pytest.raises(aio.AioRpcError) as info:
        await stub.ValidateToolRequest(
            gpb.ValidateToolRequestRequest(
                tool=gpb.TOOL_RUN_TRAINING_JOB, parameters=training(seconds=3600), request_id="b2"
            )
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "try 1800" in (info.value.details() or "")


async def test_roles_and_missing_tool(governance: Client) -> None:
    agent = governance.stub(Role.AGENT)
    for call in (
        agent.SetMode(gpb.SetModeRequest(mode=gpb.MODE_LOCKED)),
        agent.ApproveRequest(gpb.ApproveRequestRequest(pending_request_id="x")),
        agent.RejectRequest(gpb.RejectRequestRequest(pending_request_id="x")),
        agent.BeginTransaction(gpb.BeginTransactionRequest(paths=["x"])),
        agent.VerifyAuditLog(gpb.VerifyAuditLogRequest()),
    ):
        with pytest.raises(aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(aio.AioRpcError) as info:
        await agent.ValidateToolRequest(gpb.ValidateToolRequestRequest(dry_run=True))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tool" in (info.value.details() or "")
    with pytest.raises(aio.AioRpcError) as info:
        await agent.ValidateToolRequest(
            gpb.ValidateToolRequestRequest(
                tool=gpb.TOOL_MANAGE_CHECKPOINTS, on_behalf_of="someone-else"
            )
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_supervised_flow_and_locked(governance: Client) -> None:
    operator = governance.stub(Role.OPERATOR)
    service = governance.stub(Role.SERVICE)
    reply = await operator.SetMode(gpb.SetModeRequest(mode=gpb.MODE_SUPERVISED, reason="review"))
    assert reply.previous_mode == gpb.MODE_AUTONOMOUS
    request = gpb.ValidateToolRequestRequest(
        tool=gpb.TOOL_RUN_TRAINING_JOB,
        parameters=training(),
        request_id="sup-1",
        on_behalf_of="architect",
        wait_for_approval_seconds=10,
    )
    waiting = asyncio.ensure_future(service.ValidateToolRequest(request))
    pending: list[gpb.PendingRequest] = []
    for _ in range(100):
        pending = list(
            (await operator.ListPendingRequests(gpb.ListPendingRequestsRequest())).pending_requests
        )
        if pending:
            break
        await asyncio.sleep(0.05)
    assert [p.caller for p in pending] == ["architect"]
    await operator.ApproveRequest(
        gpb.ApproveRequestRequest(pending_request_id=pending[0].pending_request_id, reason="ok")
    )
    decision = (await waiting).decision
    assert decision.outcome == gpb.DECISION_OUTCOME_ALLOWED and decision.allowed

    await operator.SetMode(gpb.SetModeRequest(mode=gpb.MODE_LOCKED))
    with pytest.raises(aio.AioRpcError) as info:
        await service.ValidateToolRequest(
            gpb.ValidateToolRequestRequest(tool=gpb.TOOL_MANAGE_CHECKPOINTS, request_id="l1")
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "LOCKED" in (info.value.details() or "")
    assert (await service.GetMode(gpb.GetModeRequest())).mode == gpb.MODE_LOCKED
    verify = await operator.VerifyAuditLog(gpb.VerifyAuditLogRequest())
    assert verify.ok and verify.records_checked >= 5
    modes = await operator.ListAuditRecords(gpb.ListAuditRecordsRequest(caller="operator"))
    assert sum(r.action == "set_mode" for r in modes.records) == 2


async def test_sighup_reload_refuses_broken_policy(governance: Client) -> None:
    stub = governance.stub(Role.OPERATOR)
    before = (await stub.GetMode(gpb.GetModeRequest())).policy_version
    home = governance.service.home
    (home / "policy.yaml").write_text("version: broken\ntools:\n  run_training_job: [\n")
    assert governance.service.process is not None
    governance.service.process.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    assert (await stub.GetMode(gpb.GetModeRequest())).policy_version == before
    refused = await stub.ListAuditRecords(gpb.ListAuditRecordsRequest(caller="operator (SIGHUP)"))
    assert refused.records[-1].outcome == "refused" and "line" in refused.records[-1].detail

    (home / "policy.yaml").write_text(POLICY.replace("version: it", "version: it2"))
    governance.service.process.send_signal(signal.SIGHUP)
    for _ in range(50):
        now = (await stub.GetMode(gpb.GetModeRequest())).policy_version
        if now != before:
            break
        await asyncio.sleep(0.1)
    assert now.startswith("it2+")


async def test_transaction_of_a_killed_holder_is_rolled_back(governance: Client) -> None:
    home = governance.service.home
    work = home / "runs" / "r1"
    work.mkdir(parents=True)
    (work / "a.txt").write_text("original")
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.governance.holder_client",
        str(governance.service.port),
        str(home),
        "runs/r1",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdout is not None
    transaction_id = (await asyncio.wait_for(holder.stdout.readline(), 60)).decode().strip()
    assert (work / "new.txt").exists()
    holder.kill()
    await holder.wait()
    operator = governance.stub(Role.OPERATOR)

    async def rolled_back() -> bool:
        # The rollback's audit record is written once the files are restored.
        listed = await operator.ListAuditRecords(gpb.ListAuditRecordsRequest(caller="governance"))
        return any(
            r.action == "rollback_transaction" and transaction_id in r.detail
            for r in listed.records
        )

    for _ in range(600):
        if await rolled_back():
            break
        await asyncio.sleep(0.1)
    assert await rolled_back()
    assert (work / "a.txt").read_text() == "original"
    assert not (work / "new.txt").exists()


async def test_sigkill_mid_transaction_then_restart(governance: Client) -> None:
    home = governance.service.home
    (home / "ckpt").mkdir()
    for n in range(5):
        (home / "ckpt" / f"{n}.pt").write_bytes(bytes([n]) * 1000)
    service = governance.stub(Role.SERVICE)
    await service.BeginTransaction(
        gpb.BeginTransactionRequest(tool=gpb.TOOL_MANAGE_CHECKPOINTS, paths=["ckpt"])
    )
    for n in range(3):  # a multi-file change, interrupted
        (home / "ckpt" / f"{n}.pt").unlink()
    (home / "ckpt" / "partial.pt").write_bytes(b"x")
    await governance.close()
    assert await governance.service.signal_and_wait(signal.SIGKILL) == -signal.SIGKILL
    await governance.service.start()
    assert sorted(p.name for p in (home / "ckpt").iterdir()) == [f"{n}.pt" for n in range(5)]
    assert (home / "ckpt" / "2.pt").read_bytes() == bytes([2]) * 1000
    verify = await governance.stub(Role.OPERATOR).VerifyAuditLog(gpb.VerifyAuditLogRequest())
    assert verify.ok, verify.reason


def test_default_policy_written_on_first_start(tmp_path: Path) -> None:
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            "import asyncio, pathlib; from services.governance.core import Governance;"
            f"g = Governance(pathlib.Path({str(tmp_path)!r}));"
            "asyncio.run(g.open()); print(g.policy.version); asyncio.run(g.close())",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert (tmp_path / "policy.yaml").exists()
    assert process.stdout.strip().startswith("2026.1+")


async def test_malformed_values_are_invalid_argument_and_audited(governance: Client) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await governance.stub(Role.AGENT).ValidateToolRequest(
            gpb.ValidateToolRequestRequest(
                tool=gpb.TOOL_RUN_TRAINING_JOB,
                parameters=training(lr=float("nan")),
                request_id="nan-1",
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hyperparameters.optimizer.learning_rate" in (info.value.details() or "")
    records = await governance.stub(Role.OPERATOR).ListAuditRecords(
        gpb.ListAuditRecordsRequest(decision=gpb.DECISION_OUTCOME_DENIED)
    )
    assert any("must be finite" in r.outcome for r in records.records)


async def test_a_retry_after_a_kill_mid_transaction_gets_a_new_transaction(
    governance: Client,
) -> None:
    home = governance.service.home
    (home / "work").mkdir()
    (home / "work" / "a").write_text("original")
    begin = gpb.BeginTransactionRequest(
        request_id="txn:k1", tool=gpb.TOOL_MANAGE_CHECKPOINTS, paths=["work"]
    )
    first = (await governance.stub(Role.SERVICE).BeginTransaction(begin)).transaction
    (home / "work" / "a").write_text("half-done")
    await governance.close()
    assert await governance.service.signal_and_wait(signal.SIGKILL) == -signal.SIGKILL
    await governance.service.start()  # rolls the open transaction back
    assert (home / "work" / "a").read_text() == "original"
    service = governance.stub(Role.SERVICE)
    retry = (await service.BeginTransaction(begin)).transaction  # the tool's retry
    assert retry.transaction_id != first.transaction_id
    assert retry.state == gpb.TRANSACTION_STATE_OPEN
    (home / "work" / "a").write_text("the retry failed too")
    await service.RollbackTransaction(
        gpb.RollbackTransactionRequest(transaction_id=retry.transaction_id)
    )
    assert (home / "work" / "a").read_text() == "original"
    with pytest.raises(aio.AioRpcError) as info:
        await service.CommitTransaction(
            gpb.CommitTransactionRequest(transaction_id=first.transaction_id)
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
