"""Measure 8: ValidateToolRequest through the real governance service, with its audit log
(hash chain, anchor, group commit) against the same service whose audit keeps nothing."""

from __future__ import annotations

import statistics
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


async def validate_load(module: str, home: Path, *, seconds: float, clients: int) -> list[float]:
    service = ServiceProcess(module, home, port=free_port())
    await service.start()
    token = TokenStore.load(home).token_for(Role.SERVICE)
    parameters = struct_pb2.Struct()
    parameters.update(spec_dict("m8", epochs=2))
    try:
        async with aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
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

            await drive(validate, clients=clients, seconds=0.5)  # warm-up
            return await drive(validate, clients=clients, seconds=seconds)
    finally:
        service.kill()


async def audit_overhead(home: Path, *, seconds: float, clients: int) -> dict[str, Any]:
    audited = await validate_load(
        "services.governance", home / "audited", seconds=seconds, clients=clients
    )
    bare = await validate_load(
        "bench.noaudit_governance", home / "noaudit", seconds=seconds, clients=clients
    )
    return {
        "clients": clients,
        "audited_per_s": len(audited) / seconds,
        "no_audit_per_s": len(bare) / seconds,
        "audited_p50_ms": statistics.median(audited) * 1000,
        "audited_p99_ms": percentile(audited, 0.99) * 1000,
        "no_audit_p50_ms": statistics.median(bare) * 1000,
        "ratio": statistics.median(audited) / statistics.median(bare),
    }
