"""Attacks on governance through the four services as processes, with an agent's token and
the default policy (issue 19, findings 2, 3, 7 and 11). Each is refused and has no
effect. Nothing here trains."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arc.executor.v1 import executor_pb2, executor_pb2_grpc
from arc.governance.v1 import governance_pb2 as gpb
from arc.governance.v1 import governance_pb2_grpc
from arc_common.auth import Role, TokenStore
from services.governance.policy import DEFAULT_POLICY_PATH
from tests.security.suite import ProcessSuite, git
from tests.unit.governance.test_audit_break import rechain_with_sha256

REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
}
SERVICE_NAME = "arc.governance.v1.GovernanceService"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessSuite]:
    home = tmp_path_factory.mktemp("attacks-governance") / "ws"
    repo = home / "code" / "models"
    repo.mkdir(parents=True)
    (repo / "model.py").write_text("WIDTH = 64\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "initial")
    (home / "policy.yaml").write_text(DEFAULT_POLICY_PATH.read_text())
    processes = ProcessSuite(home, fixed_ports=True)  # governance restarts on its port
    asyncio.run(processes.start())
    yield processes
    processes.stop()


def metadata(suite: ProcessSuite, role: Role) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {TokenStore.load(suite.home).token_for(role)}")]


def governance(suite: ProcessSuite, method: str, request: Any, role: Role = Role.AGENT) -> Any:
    with grpc.insecure_channel(f"127.0.0.1:{suite.ports()['governance']}") as channel:
        stub = governance_pb2_grpc.GovernanceServiceStub(channel)
        return getattr(stub, method)(request, metadata=metadata(suite, role), timeout=30)


def executor(suite: ProcessSuite, method: str, request: Any, role: Role = Role.AGENT) -> Any:
    with grpc.insecure_channel(f"127.0.0.1:{suite.ports()['executor']}") as channel:
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        return getattr(stub, method)(request, metadata=metadata(suite, role), timeout=60)


def refused(call: Any, *args: Any, codes: set[grpc.StatusCode] = REFUSED) -> grpc.RpcError:
    # UNAVAILABLE only while the executor reconnects to a restarted governance.
    deadline = time.monotonic() + 30
    while True:
        with pytest.raises(grpc.RpcError) as info:
            call(*args)
        if info.value.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert info.value.code() in codes, (info.value.code(), info.value.details())
    return info.value


def new_file(name: str, text: str = "A = 1") -> str:
    return (
        f"diff --git a/{name} b/{name}\nnew file mode 100644\n--- /dev/null\n+++ b/{name}\n"
        f"@@ -0,0 +1 @@\n+{text}\n"
    )


def patch_request(request_id: str, patch: str) -> executor_pb2.ApplyCodePatchRequest:
    return executor_pb2.ApplyCodePatchRequest(
        request_id=request_id, repository="models", patch=patch
    )


def struct(**values: Any) -> Struct:
    out = Struct()
    out.update(values)
    return out


def repo(suite: ProcessSuite) -> Path:
    return suite.home / "code" / "models"


def head(suite: ProcessSuite) -> str:
    return git(repo(suite), "rev-parse", "HEAD")


def records(suite: ProcessSuite, **filters: Any) -> list[gpb.AuditRecord]:
    out: list[gpb.AuditRecord] = []
    token = ""
    while True:
        reply = governance(
            suite,
            "ListAuditRecords",
            gpb.ListAuditRecordsRequest(page_size=1000, page_token=token, **filters),
            Role.OPERATOR,
        )
        out.extend(reply.records)
        token = reply.next_page_token
        if not token:
            return out


def set_mode(suite: ProcessSuite, mode: gpb.Mode.ValueType) -> None:
    governance(suite, "SetMode", gpb.SetModeRequest(mode=mode, reason="test"), Role.OPERATOR)


SEVEN_SCRIPTS = "".join(new_file(f"s{n}.sh", "rm -rf /") for n in range(7))


# --- finding 2: decisions bound to their exact parameters -----------------------------------


def test_a_decision_the_agent_planted_is_not_reused_by_the_executor(suite: ProcessSuite) -> None:
    before = head(suite)
    governance(  # planted: the agent asks governance itself, under the executor's id shape
        suite,
        "ValidateToolRequest",
        gpb.ValidateToolRequestRequest(
            request_id="apply_code_patch:seed1",
            tool=gpb.TOOL_APPLY_CODE_PATCH,
            parameters=struct(repository="models", patch=""),
        ),
    )
    refused(executor, suite, "ApplyCodePatch", patch_request("seed1", SEVEN_SCRIPTS))
    assert head(suite) == before
    assert not list(repo(suite).glob("*.sh"))


def test_an_id_never_carries_other_parameters(suite: ProcessSuite) -> None:
    applied = executor(suite, "ApplyCodePatch", patch_request("bind1", new_file("a.py")))
    after = head(suite)
    assert after.strip() == applied.commit_sha
    refused(executor, suite, "ApplyCodePatch", patch_request("bind1", new_file("b.py")))
    assert head(suite) == after and not (repo(suite) / "b.py").exists()
    # The call that ran has a record of its own, with its parameters' digest.
    ran = [r for r in records(suite) if "request_id=apply_code_patch:bind1;" in r.detail]
    assert ran and all(r.parameters_digest for r in ran)
    assert ran[0].action == "validate" and ran[0].decision == gpb.DECISION_OUTCOME_ALLOWED

    # Straight at governance: other parameters under a decided id are refused, audited.
    first = gpb.ValidateToolRequestRequest(
        request_id="direct1", tool=gpb.TOOL_MANAGE_CHECKPOINTS, parameters=struct(action="list")
    )
    governance(suite, "ValidateToolRequest", first)
    other = gpb.ValidateToolRequestRequest()
    other.CopyFrom(first)
    other.parameters.CopyFrom(struct(action="delete", path="tokens.json"))
    error = refused(governance, suite, "ValidateToolRequest", other)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "direct1" in (error.details() or "")
    assert any(
        r.action == "validate_refused" and "request_id=direct1" in r.detail for r in records(suite)
    )
    replay = governance(suite, "ValidateToolRequest", first).decision
    assert replay.allowed


def test_an_approval_covers_only_the_patch_approved(suite: ProcessSuite) -> None:
    set_mode(suite, gpb.MODE_SUPERVISED)
    try:
        before = head(suite)
        approved = new_file("c.py")
        refused(executor, suite, "ApplyCodePatch", patch_request("sup1", approved))
        pending = governance(
            suite, "ListPendingRequests", gpb.ListPendingRequestsRequest(), Role.OPERATOR
        ).pending_requests
        (mine,) = [p for p in pending if p.parameters["patch"] == approved]
        governance(
            suite,
            "ApproveRequest",
            gpb.ApproveRequestRequest(pending_request_id=mine.pending_request_id, reason="ok"),
            Role.OPERATOR,
        )
        refused(executor, suite, "ApplyCodePatch", patch_request("sup1", SEVEN_SCRIPTS))
        assert head(suite) == before and not list(repo(suite).glob("*.sh"))
        executor(suite, "ApplyCodePatch", patch_request("sup1", approved))
        assert (repo(suite) / "c.py").exists()
    finally:
        set_mode(suite, gpb.MODE_AUTONOMOUS)


def test_locked_refuses_even_a_replay(suite: ProcessSuite) -> None:
    request = gpb.ValidateToolRequestRequest(
        request_id="lk1", tool=gpb.TOOL_MANAGE_CHECKPOINTS, parameters=struct(action="list")
    )
    assert governance(suite, "ValidateToolRequest", request).decision.allowed
    set_mode(suite, gpb.MODE_LOCKED)
    try:
        error = refused(governance, suite, "ValidateToolRequest", request)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        before = head(suite)
        refused(executor, suite, "ApplyCodePatch", patch_request("lk2", new_file("l.py")))
        assert head(suite) == before and not (repo(suite) / "l.py").exists()
    finally:
        set_mode(suite, gpb.MODE_AUTONOMOUS)
    assert governance(suite, "ValidateToolRequest", request).decision.allowed


# --- finding 3: no writes outside a transaction -------------------------------------------


def test_a_rolled_back_transaction_is_never_handed_out_again(suite: ProcessSuite) -> None:
    work = suite.home / "runs" / "txn"
    work.mkdir(parents=True)
    (work / "a").write_text("original")
    begin = gpb.BeginTransactionRequest(
        request_id="txn:retry", tool=gpb.TOOL_MANAGE_CHECKPOINTS, paths=["runs/txn"]
    )
    refused(governance, suite, "BeginTransaction", begin, codes={grpc.StatusCode.PERMISSION_DENIED})
    first = governance(suite, "BeginTransaction", begin, Role.SERVICE).transaction
    (work / "a").write_text("failed attempt")
    governance(
        suite,
        "RollbackTransaction",
        gpb.RollbackTransactionRequest(transaction_id=first.transaction_id),
        Role.SERVICE,
    )
    retry = governance(suite, "BeginTransaction", begin, Role.SERVICE).transaction
    assert retry.transaction_id != first.transaction_id
    assert retry.state == gpb.TRANSACTION_STATE_OPEN
    (work / "a").write_text("the retry failed too")
    (work / "b").write_text("written by the retry")
    governance(
        suite,
        "RollbackTransaction",
        gpb.RollbackTransactionRequest(transaction_id=retry.transaction_id),
        Role.SERVICE,
    )
    assert (work / "a").read_text() == "original" and not (work / "b").exists()
    error = refused(
        governance,
        suite,
        "CommitTransaction",
        gpb.CommitTransactionRequest(transaction_id=first.transaction_id),
        Role.SERVICE,
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


# --- finding 7 (and 8): every number bounded; a bad row never stops the service -------------


def test_unbounded_values_are_invalid_argument(suite: ProcessSuite) -> None:
    hostile = gpb.BeginTransactionRequest(
        request_id="hostile",
        tool=gpb.TOOL_MANAGE_CHECKPOINTS,
        paths=["runs"],
        timeout_seconds=2**63 - 1,
    )
    error = refused(governance, suite, "BeginTransaction", hostile, Role.SERVICE)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "timeout_seconds" in (error.details() or "")
    for name, request in (
        ("start_time", gpb.ListAuditRecordsRequest(start_time=Timestamp(seconds=2**62))),
        ("end_time", gpb.ListAuditRecordsRequest(end_time=Timestamp(seconds=-(2**62)))),
    ):
        error = refused(
            governance,
            suite,
            "ListAuditRecords",
            request,
            Role.OPERATOR,
            codes={grpc.StatusCode.INVALID_ARGUMENT},
        )
        assert name in (error.details() or "")
    deep: Any = 1
    for _ in range(20):  # over the bound of 16, under protobuf's own
        deep = {"x": deep}
    invalid = {grpc.StatusCode.INVALID_ARGUMENT}
    cases: list[tuple[dict[str, Any], str, set[grpc.StatusCode]]] = [
        ({"gpu_allocation": {"gpu_count": "abc"}}, "gpu_count", invalid),
        ({"gpu_allocation": {"gpu_count": float("nan")}}, "gpu_count", invalid),
        ({"gpu_allocation": "abc"}, "gpu_allocation", invalid),
        ({"deep": deep}, "parameters", invalid),
        # Over the policy's maximum: a denial that says the bound.
        (
            {"max_training_time_seconds": 1e300},
            "max_training_time_seconds",
            {*invalid, grpc.StatusCode.PERMISSION_DENIED},
        ),
    ]
    for parameters, field, codes in cases:
        error = refused(
            governance,
            suite,
            "ValidateToolRequest",
            gpb.ValidateToolRequestRequest(
                tool=gpb.TOOL_RUN_TRAINING_JOB, parameters=struct(**parameters)
            ),
            codes=codes,
        )
        assert field in (error.details() or ""), (parameters, error.details())


async def restart_governance(suite: ProcessSuite) -> None:
    await suite.governance.signal_and_wait(signal.SIGKILL)
    await suite.governance.start()


def test_a_hostile_row_is_quarantined_and_governance_restarts(suite: ProcessSuite) -> None:
    database = suite.home / "governance" / "governance.sqlite3"
    with sqlite3.connect(database) as db:  # what a hostile BeginTransaction stored before
        db.execute(
            "INSERT INTO transactions VALUES ('planted', 'r', 'manage_checkpoints', "
            "'[\"runs\"]', 'open', 'service', 1.0, ?)",
            (2**63 - 1,),
        )
    asyncio.run(restart_governance(suite))
    reply = governance(suite, "GetMode", gpb.GetModeRequest())
    assert reply.mode == gpb.MODE_AUTONOMOUS and not reply.locked_reason
    assert any(
        r.action == "quarantine_transaction" and "planted" in r.detail for r in records(suite)
    )
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT key FROM quarantine").fetchall() == [("planted",)]
        assert not db.execute("SELECT 1 FROM transactions WHERE state = 'open'").fetchall()


# --- finding 11: an audit log nobody can quietly rewrite ------------------------------------


def health(suite: ProcessSuite) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{suite.ports()['governance']}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10
        )
        status: int = reply.status
        return status


def assert_locked_until_the_operator_acts(suite: ProcessSuite, words: str) -> None:
    mode = governance(suite, "GetMode", gpb.GetModeRequest())
    assert mode.mode == gpb.MODE_LOCKED and words in mode.locked_reason, mode
    assert health(suite) == health_pb2.HealthCheckResponse.NOT_SERVING
    error = refused(
        governance,
        suite,
        "ValidateToolRequest",
        gpb.ValidateToolRequestRequest(request_id="after-break", tool=gpb.TOOL_MANAGE_CHECKPOINTS),
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    before = head(suite)
    refused(executor, suite, "ApplyCodePatch", patch_request(f"brk-{words}", new_file("k.py")))
    assert head(suite) == before and not (repo(suite) / "k.py").exists()
    assert any(r.action == "audit_break" and words in r.detail for r in records(suite))

    set_mode(suite, gpb.MODE_AUTONOMOUS)  # the operator acts
    assert not governance(suite, "GetMode", gpb.GetModeRequest()).locked_reason
    assert health(suite) == health_pb2.HealthCheckResponse.SERVING
    assert any(r.action == "audit_break_cleared" for r in records(suite, caller="operator"))


def test_a_truncated_tail_with_its_anchor_file_deleted_is_caught(suite: ProcessSuite) -> None:
    folder = suite.home / "governance"
    asyncio.run(suite.governance.signal_and_wait(signal.SIGKILL))
    with sqlite3.connect(folder / "audit.sqlite3") as db:
        last = db.execute("SELECT MAX(sequence) FROM audit").fetchone()[0]
        db.execute("DELETE FROM audit WHERE sequence > ?", (last - 3,))
    (folder / "audit_anchor.json").unlink()
    asyncio.run(suite.governance.start())
    assert_locked_until_the_operator_acts(suite, "truncated")


def test_a_chain_recomputed_with_plain_sha256_is_caught(suite: ProcessSuite) -> None:
    asyncio.run(suite.governance.signal_and_wait(signal.SIGKILL))
    rechain_with_sha256(suite.home / "governance" / "audit.sqlite3")
    asyncio.run(suite.governance.start())
    assert_locked_until_the_operator_acts(suite, "altered")
