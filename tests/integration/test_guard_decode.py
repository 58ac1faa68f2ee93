"""Request bodies are parsed after authentication: a caller without a token gets
UNAUTHENTICATED whatever it sends, a caller with one gets INVALID_ARGUMENT for bytes
that are not the method's request, never grpc's UNKNOWN."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from arc.governance.v1 import governance_pb2
from arc_common.auth import Role, TokenStore
from arc_common.server import ServerHandle, start_server
from arc_common.settings import ServiceSettings
from tests.integration.probe_service import registration

GET_MODE = "/arc.governance.v1.GovernanceService/GetMode"
# A length-delimited field 1 that claims 100 bytes and carries two: not decodable.
TRUNCATED = b"\x0a\x64ab"


@pytest.fixture
async def probe(tmp_path: Path) -> AsyncIterator[tuple[ServerHandle, TokenStore]]:
    tokens = TokenStore.ensure(tmp_path)
    settings = ServiceSettings(home=tmp_path, port=0)
    handle = await start_server(settings, [registration()], tokens=tokens)
    yield handle, tokens
    await handle.stop(0)


async def _raw(port: int, body: bytes, token: str | None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(GET_MODE)  # bytes in, bytes out
        try:
            await call(body, metadata=metadata, timeout=10)
        except aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_undecodable_body_without_token_is_unauthenticated(
    probe: tuple[ServerHandle, TokenStore],
) -> None:
    handle, _ = probe
    assert await _raw(handle.port, TRUNCATED, None) == grpc.StatusCode.UNAUTHENTICATED


async def test_undecodable_body_with_token_is_invalid_argument(
    probe: tuple[ServerHandle, TokenStore],
) -> None:
    handle, tokens = probe
    token = tokens.token_for(Role.AGENT)
    assert await _raw(handle.port, TRUNCATED, token) == grpc.StatusCode.INVALID_ARGUMENT
    # A well-formed body still reaches the servicer.
    body = governance_pb2.GetModeRequest().SerializeToString()
    assert await _raw(handle.port, body, token) == grpc.StatusCode.OK
