"""run_server's contract through a real grpc.aio server on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from arc.governance.v1 import governance_pb2, governance_pb2_grpc
from arc_common.auth import Role, TokenStore
from arc_common.channel import create_channel
from arc_common.interceptors import Guard
from arc_common.server import Registration, ServerHandle, start_server
from arc_common.settings import ServiceSettings
from tests.conftest import REPO_ROOT
from tests.integration.probe_service import registration


@pytest.fixture
async def probe(tmp_path: Path) -> AsyncIterator[tuple[ServerHandle, TokenStore]]:
    tokens = TokenStore.ensure(tmp_path)
    settings = ServiceSettings(home=tmp_path, port=0, max_message_bytes=64 * 1024)
    handle = await start_server(settings, [registration()], tokens=tokens)
    yield handle, tokens
    await handle.stop(0)


_open_channels: list[aio.Channel] = []


@pytest.fixture(autouse=True)
async def _close_channels() -> AsyncIterator[None]:
    yield
    while _open_channels:
        await _open_channels.pop().close()


def stub(port: int, token: str | None) -> governance_pb2_grpc.GovernanceServiceStub:
    """A stub whose channel stays referenced until the test ends (aio closes it when collected)."""
    channel = create_channel(f"127.0.0.1:{port}", token=token, default_timeout=10)
    _open_channels.append(channel)
    return governance_pb2_grpc.GovernanceServiceStub(channel)


async def test_health_serving_without_token(probe: tuple[ServerHandle, TokenStore]) -> None:
    handle, _ = probe
    async with aio.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "arc.governance.v1.GovernanceService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_services(probe: tuple[ServerHandle, TokenStore]) -> None:
    handle, _ = probe
    async with aio.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        names = set()
        async for reply in reflection.ServerReflectionInfo(iter([request]), timeout=5):
            names |= {s.name for s in reply.list_services_response.service}
    assert {"arc.governance.v1.GovernanceService", "grpc.health.v1.Health"} <= names


async def test_no_token_is_unauthenticated(probe: tuple[ServerHandle, TokenStore]) -> None:
    handle, _ = probe
    with pytest.raises(aio.AioRpcError) as info:
        await stub(handle.port, None).GetMode(governance_pb2.GetModeRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization" in (info.value.details() or "")


@pytest.mark.parametrize("header", ["Bearer not-a-real-token", "Basic abc", "Bearer", "token"])
async def test_bad_tokens_are_unauthenticated(
    probe: tuple[ServerHandle, TokenStore], header: str
) -> None:
    handle, _ = probe
    client = stub(handle.port, None)
    with pytest.raises(aio.AioRpcError) as info:
        await client.GetMode(governance_pb2.GetModeRequest(), metadata=[("authorization", header)])
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_agent_cannot_call_operator_rpc(probe: tuple[ServerHandle, TokenStore]) -> None:
    handle, tokens = probe
    agent = stub(handle.port, tokens.token_for(Role.AGENT))
    assert (await agent.GetMode(governance_pb2.GetModeRequest())).mode == (
        governance_pb2.MODE_AUTONOMOUS
    )
    with pytest.raises(aio.AioRpcError) as info:
        await agent.SetMode(governance_pb2.SetModeRequest(mode=governance_pb2.MODE_LOCKED))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "agent" in (info.value.details() or "")
    operator = stub(handle.port, tokens.token_for(Role.OPERATOR))
    reply = await operator.SetMode(governance_pb2.SetModeRequest(mode=governance_pb2.MODE_LOCKED))
    assert reply.mode == governance_pb2.MODE_LOCKED


async def test_domain_error_maps_to_status_and_unknown_is_not_leaked(
    probe: tuple[ServerHandle, TokenStore],
) -> None:
    handle, tokens = probe
    client = stub(handle.port, tokens.token_for(Role.OPERATOR))
    with pytest.raises(aio.AioRpcError) as info:
        await client.ListPendingRequests(governance_pb2.ListPendingRequestsRequest(page_size=-1))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in (info.value.details() or "")
    with pytest.raises(aio.AioRpcError) as info:
        await client.ListPendingRequests(governance_pb2.ListPendingRequestsRequest())
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (info.value.details() or "")
    assert "request id" in (info.value.details() or "")


async def test_oversized_message_is_resource_exhausted(
    probe: tuple[ServerHandle, TokenStore],
) -> None:
    handle, tokens = probe
    client = stub(handle.port, tokens.token_for(Role.OPERATOR))
    with pytest.raises(aio.AioRpcError) as info:
        await client.SetMode(governance_pb2.SetModeRequest(reason="x" * 200_000))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_unimplemented_rpc_still_requires_auth(
    probe: tuple[ServerHandle, TokenStore],
) -> None:
    handle, tokens = probe
    with pytest.raises(aio.AioRpcError) as info:
        await stub(handle.port, None).VerifyAuditLog(governance_pb2.VerifyAuditLogRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(aio.AioRpcError) as info:
        await stub(handle.port, tokens.token_for(Role.OPERATOR)).VerifyAuditLog(
            governance_pb2.VerifyAuditLogRequest()
        )
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_methods_added_as_generic_handlers_are_guarded_too(tmp_path: Path) -> None:
    """A service that registers its methods only as a generic handler (no registered
    methods) is behind the same checks as one the generated code adds."""
    tokens = TokenStore.ensure(tmp_path)
    reasons: list[str] = []

    async def set_mode(
        request: governance_pb2.SetModeRequest, context: object
    ) -> governance_pb2.SetModeResponse:
        reasons.append(request.reason)
        return governance_pb2.SetModeResponse()

    def add(servicer: object, server: aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            set_mode,
            request_deserializer=governance_pb2.SetModeRequest.FromString,
            response_serializer=governance_pb2.SetModeResponse.SerializeToString,
        )
        service = "arc.governance.v1.GovernanceService"
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"SetMode": handler}),)
        )

    descriptor = governance_pb2.DESCRIPTOR.services_by_name["GovernanceService"]
    settings = ServiceSettings(home=tmp_path, port=0)
    handle = await start_server(settings, [Registration(None, add, descriptor)], tokens=tokens)
    try:
        request = governance_pb2.SetModeRequest(reason="generic")
        for token, code in (
            (None, grpc.StatusCode.UNAUTHENTICATED),
            (tokens.token_for(Role.AGENT), grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(aio.AioRpcError) as info:
                await stub(handle.port, token).SetMode(request)
            assert info.value.code() == code
        assert reasons == []
        await stub(handle.port, tokens.token_for(Role.OPERATOR)).SetMode(request)
        assert reasons == ["generic"]
    finally:
        await handle.stop(0)


def test_client_streaming_methods_cannot_be_guarded(tmp_path: Path) -> None:
    """Our contracts have none; one that appeared would fail at registration, not be
    served unchecked."""
    handler = grpc.stream_stream_rpc_method_handler(lambda requests, context: requests)
    with pytest.raises(ValueError, match="only unary and server-streaming"):
        Guard(TokenStore.ensure(tmp_path)).wrap("/arc.x.v1.X/Chat", handler)
    assert Guard(None).wrap("/grpc.health.v1.Health/Watch", handler) is handler  # open


def _wait_for_file(path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not appear")


async def test_sigterm_lets_in_flight_call_finish(tmp_path: Path) -> None:
    port_file = tmp_path / "probe.port"
    env = {**os.environ, "ARC_PROBE_DELAY": "1.5", "ARC_GRACE_SECONDS": "10"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.probe_service",
            "--port",
            "0",
            "--home",
            str(tmp_path),
            "--port-file",
            str(port_file),
        ],
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(await asyncio.to_thread(_wait_for_file, port_file, 30))
        token = TokenStore.load(tmp_path).token_for(Role.AGENT)
        client = stub(port, token)
        call = asyncio.ensure_future(client.GetMode(governance_pb2.GetModeRequest()))
        await asyncio.sleep(0.5)
        assert not call.done()
        process.send_signal(signal.SIGTERM)
        reply = await call
        assert reply.mode == governance_pb2.MODE_AUTONOMOUS
        _, log = await asyncio.to_thread(process.communicate, None, 20)
        assert process.returncode == 0
        assert "shutting down" in log and "stopped" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
