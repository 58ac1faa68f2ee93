"""Tokens file, bearer parsing and the authorization table."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from arc.executor.v1 import executor_pb2
from arc.governance.v1 import governance_pb2
from arc.gpu.v1 import gpu_pb2
from arc.scheduler.v1 import scheduler_pb2, sweep_pb2
from arc_common import auth
from arc_common.errors import PermissionDeniedError, UnauthenticatedError

SERVICES = [
    scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"],
    sweep_pb2.DESCRIPTOR.services_by_name["SweepService"],
    gpu_pb2.DESCRIPTOR.services_by_name["GpuManagerService"],
    governance_pb2.DESCRIPTOR.services_by_name["GovernanceService"],
    executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"],
]


def all_methods() -> set[str]:
    return {f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods}


def test_table_covers_exactly_the_contracts() -> None:
    assert set(auth.AUTHORIZATION) == all_methods()


def test_operator_may_call_everything() -> None:
    operator = auth.Identity("op", auth.Role.OPERATOR)
    for method in all_methods():
        auth.authorize(method, operator)


@pytest.mark.parametrize(
    "method",
    [
        "/arc.governance.v1.GovernanceService/SetMode",
        "/arc.governance.v1.GovernanceService/ApproveRequest",
        "/arc.governance.v1.GovernanceService/RejectRequest",
        "/arc.gpu.v1.GpuManagerService/AcquireLease",
        "/arc.executor.v1.ExecutorService/StartRun",
        "/arc.nothing.v1.Unknown/Call",
    ],
)
def test_agent_denied_operator_and_service_rpcs(method: str) -> None:
    with pytest.raises(PermissionDeniedError, match="agent"):
        auth.authorize(method, auth.Identity("a", auth.Role.AGENT))


def test_service_role_cannot_decide_approvals() -> None:
    with pytest.raises(PermissionDeniedError):
        auth.authorize(
            "/arc.governance.v1.GovernanceService/ApproveRequest",
            auth.Identity("s", auth.Role.SERVICE),
        )


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer  ", "Basic x", "Bearer a b"])
def test_malformed_headers(header: str | None) -> None:
    with pytest.raises(UnauthenticatedError):
        auth.parse_bearer(header)


def test_bearer_parsing_is_case_insensitive_on_scheme() -> None:
    assert auth.parse_bearer("bearer abc123") == "abc123"


def test_tokens_created_once_private_and_stable(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        stores = list(pool.map(lambda _: auth.TokenStore.ensure(tmp_path), range(8)))
    tokens = {s.token_for(auth.Role.OPERATOR) for s in stores}
    assert len(tokens) == 1
    operator_token = (tmp_path / "auth_token").read_text().strip()
    assert tokens == {operator_token}
    for name in ("auth_token", "tokens.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    store = stores[0]
    assert store.authenticate(operator_token).role is auth.Role.OPERATOR
    assert store.authenticate(store.token_for(auth.Role.AGENT)).role is auth.Role.AGENT
    with pytest.raises(UnauthenticatedError):
        store.authenticate(operator_token + "x")
