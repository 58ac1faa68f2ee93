"""Each service starts as a user starts it (``python -m services.<name>``) and answers probes."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import ServiceProcess

SERVICES = {
    "scheduler": "arc.scheduler.v1.SchedulerService",
    "gpu_manager": "arc.gpu.v1.GpuManagerService",
    "governance": "arc.governance.v1.GovernanceService",
    "executor": "arc.executor.v1.ExecutorService",
}


@pytest.mark.parametrize("name", sorted(SERVICES))
async def test_service_starts_serves_health_and_stops_on_sigterm(name: str, tmp_path: Path) -> None:
    service = ServiceProcess(f"services.{name}", tmp_path / "home")
    try:
        port = await service.start()
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICES[name]), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert (tmp_path / "home" / "auth_token").exists()
        assert await service.signal_and_wait(signal.SIGTERM) == 0, service.log()
    finally:
        service.kill()
