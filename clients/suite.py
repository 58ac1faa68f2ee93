"""Start and stop the four services on one machine, as ``arc up`` and ``arc demo`` do."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.arc_client import Addresses

REPO_ROOT = Path(__file__).resolve().parents[1]

# Start order: what others depend on first. Ports: base+0 scheduler ... base+3 executor.
SERVICES = (
    ("governance", 2, "arc.governance.v1.GovernanceService"),
    ("gpu_manager", 1, "arc.gpu.v1.GpuManagerService"),
    ("executor", 3, "arc.executor.v1.ExecutorService"),
    ("scheduler", 0, "arc.scheduler.v1.SchedulerService"),
)


@dataclass
class LocalSuite:
    home: Path
    port_base: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def addresses(self) -> Addresses:
        return Addresses.from_port_base(self.port_base)

    def _env(self, name: str) -> dict[str, str]:
        a = self.addresses
        env = {**os.environ, "ARC_HOME": str(self.home), "DVC_NO_ANALYTICS": "1"}
        if name == "executor":
            env["ARC_EXECUTOR_GPU_MANAGER_ADDRESS"] = a.gpu_manager
            env["ARC_EXECUTOR_GOVERNANCE_ADDRESS"] = a.governance
        if name == "scheduler":
            env["ARC_SCHEDULER_NODES"] = json.dumps(
                [{"name": "local", "gpu_manager": a.gpu_manager, "executor": a.executor}]
            )
            env["ARC_SCHEDULER_GOVERNANCE_ADDRESS"] = a.governance
        return env

    async def start(self, *, startup_seconds: float = 90) -> None:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name, offset, service in SERVICES:
            with (logs / f"{name}.log").open("ab") as log:
                self.processes[name] = subprocess.Popen(  # noqa: ASYNC220 - instant
                    [
                        sys.executable,
                        "-m",
                        f"services.{name}",
                        "--port",
                        str(self.port_base + offset),
                        "--home",
                        str(self.home),
                    ],
                    cwd=REPO_ROOT,
                    env=self._env(name),
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            await self._wait_serving(
                name, f"127.0.0.1:{self.port_base + offset}", service, startup_seconds
            )

    async def _wait_serving(self, name: str, address: str, service: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        async with aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                process = self.processes[name]
                if process.poll() is not None:
                    log = (self.home / "logs" / f"{name}.log").read_text()[-3000:]
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{log}")
                try:
                    reply = await health.Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=1
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except aio.AioRpcError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError(f"{name} did not become SERVING on {address} in {seconds:.0f} s")

    def stop(self, *, grace: float = 20.0) -> dict[str, int | None]:
        """SIGTERM in reverse start order (the scheduler first), then wait; kill stragglers."""
        for name, _, _ in reversed(SERVICES):
            process = self.processes.get(name)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        return {name: p.returncode for name, p in self.processes.items()}

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes.values())
