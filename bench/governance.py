"""Measure 8: ValidateToolRequest through the real governance service, with its audit log
(hash chain, anchor, group commit) against the same service whose audit keeps nothing."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2
from grpc import aio

from arc.governance.v1 import governance_pb2, governance_pb2_grpc
from arc_common.auth import Role, TokenStore
from bench.common import drive, percentile
from bench.engine import spec_dict
from tests.helpers import ServiceProcess
from tests.security.suite import free_port

ROUND_SECONDS = 0.5


Started = tuple[ServiceProcess, aio.Channel, Callable[[int], Awaitable[Any]]]


async def started(module: str, home: Path) -> Started:
    """A governance service (``module``) and a caller of its ValidateToolRequest."""
    service = ServiceProcess(module, home, port=free_port())
    await service.start()
    token = TokenStore.load(home).token_for(Role.SERVICE)
    parameters = struct_pb2.Struct()
    parameters.update(spec_dict("m8", epochs=2))
    channel = aio.insecure_channel(f"127.0.0.1:{service.port}")
    stub = governance_pb2_grpc.GovernanceServiceStub(channel)

    async def validate(n: int) -> Any:
        return await stub.ValidateToolRequest(
            governance_pb2.ValidateToolRequestRequest(
                request_id=f"m8-{n}",
                tool=governance_pb2.TOOL_RUN_TRAINING_JOB,
                parameters=parameters,
                dry_run=True,
            ),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=30,
        )

    return service, channel, validate


async def audit_overhead(home: Path, *, seconds: float, clients: int) -> dict[str, Any]:
    """Both services run side by side and take turns, ROUND_SECONDS each, so that a slow
    spell of this noisy machine falls on both alike."""
    audited_service = await started("services.governance", home / "audited")
    bare_service = await started("bench.noaudit_governance", home / "noaudit")
    audited_call, bare_call = audited_service[2], bare_service[2]
    rounds = max(1, round(seconds / ROUND_SECONDS))
    audited: list[float] = []
    bare: list[float] = []
    try:
        for call in (audited_call, bare_call):  # warm-up
            await drive(call, clients=clients, seconds=ROUND_SECONDS)
        for _ in range(rounds):
            audited += await drive(audited_call, clients=clients, seconds=ROUND_SECONDS)
            bare += await drive(bare_call, clients=clients, seconds=ROUND_SECONDS)
    finally:
        for service, channel, _ in (audited_service, bare_service):
            await channel.close()
            service.kill()
    spent = rounds * ROUND_SECONDS
    return {
        "clients": clients,
        "audited_per_s": len(audited) / spent,
        "no_audit_per_s": len(bare) / spent,
        "audited_p50_ms": statistics.median(audited) * 1000,
        "audited_p99_ms": percentile(audited, 0.99) * 1000,
        "no_audit_p50_ms": statistics.median(bare) * 1000,
        "ratio": statistics.median(audited) / statistics.median(bare),
    }
