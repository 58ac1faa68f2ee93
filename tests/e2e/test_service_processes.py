"""Each service starts as a user starts it (``python -m services.<name>``) and answers probes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import REPO_ROOT

SERVICES = {
    "scheduler": "arc.scheduler.v1.SchedulerService",
    "gpu_manager": "arc.gpu.v1.GpuManagerService",
    "governance": "arc.governance.v1.GovernanceService",
    "executor": "arc.executor.v1.ExecutorService",
}


def _wait_port(path: Path, process: subprocess.Popen[str], timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        if process.poll() is not None:
            raise RuntimeError(f"service exited early with {process.returncode}")
        time.sleep(0.05)
    raise TimeoutError(str(path))


@pytest.mark.parametrize("name", sorted(SERVICES))
async def test_service_starts_serves_health_and_stops_on_sigterm(name: str, tmp_path: Path) -> None:
    port_file = tmp_path / f"{name}.port"
    process = subprocess.Popen(  # noqa: ASYNC220 - starting is instant; waits go to threads
        [
            sys.executable,
            "-m",
            f"services.{name}",
            "--port",
            "0",
            "--home",
            str(tmp_path / "home"),
            "--port-file",
            str(port_file),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = await asyncio.to_thread(_wait_port, port_file, process)
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICES[name]), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert (tmp_path / "home" / "auth_token").exists()
        process.send_signal(signal.SIGTERM)
        _, log = await asyncio.to_thread(process.communicate, None, 30)
        assert process.returncode == 0, log
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
