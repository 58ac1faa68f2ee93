"""The four services as real processes on one workspace, for the security and fault tests."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from pathlib import Path

from tests.helpers import ServiceProcess


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ProcessSuite:
    """With ``fixed_ports`` every service keeps its port across restarts (kill tests)."""

    def __init__(
        self,
        home: Path,
        *,
        data_root: Path | None = None,
        fixed_ports: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        """``env`` goes to every service (each reads only its own ARC_<SERVICE>_ settings)
        and wins over the suite's own wiring."""
        self.home = home
        self.data_root = data_root
        self._fixed = fixed_ports
        self._env = env or {}
        self.gpu = ServiceProcess(
            "services.gpu_manager",
            home,
            port=self._port(),
            env={"ARC_GPU_MANAGER_BACKEND": "simulated", **self._env},
        )
        self.governance = ServiceProcess(
            "services.governance", home, port=self._port(), env=self._env
        )
        self.executor: ServiceProcess | None = None
        self.scheduler: ServiceProcess | None = None

    def _port(self) -> int:
        return free_port() if self._fixed else 0

    async def start(self) -> None:
        await asyncio.gather(self.gpu.start(), self.governance.start())
        env = {
            "ARC_EXECUTOR_GPU_MANAGER_ADDRESS": f"127.0.0.1:{self.gpu.port}",
            "ARC_EXECUTOR_GOVERNANCE_ADDRESS": f"127.0.0.1:{self.governance.port}",
            "ARC_EXECUTOR_APPROVAL_WAIT_SECONDS": "0",
            **self._env,
        }
        if self.data_root is not None:
            env["ARC_EXECUTOR_DATA_ROOT"] = str(self.data_root)
        self.executor = ServiceProcess("services.executor", self.home, env=env, port=self._port())
        await self.executor.start()
        nodes = [
            {
                "name": "local",
                "gpu_manager": f"127.0.0.1:{self.gpu.port}",
                "executor": f"127.0.0.1:{self.executor.port}",
            }
        ]
        self.scheduler = ServiceProcess(
            "services.scheduler",
            self.home,
            port=self._port(),
            env={
                "ARC_SCHEDULER_NODES": json.dumps(nodes),
                "ARC_SCHEDULER_GOVERNANCE_ADDRESS": f"127.0.0.1:{self.governance.port}",
                **self._env,
            },
        )
        await self.scheduler.start()

    @property
    def processes(self) -> dict[str, ServiceProcess]:
        out = {"gpu_manager": self.gpu, "governance": self.governance}
        if self.executor is not None:
            out["executor"] = self.executor
        if self.scheduler is not None:
            out["scheduler"] = self.scheduler
        return out

    def ports(self) -> dict[str, int]:
        return {name: p.port for name, p in self.processes.items()}

    def alive(self) -> dict[str, bool]:
        return {
            name: p.process is not None and p.process.poll() is None
            for name, p in self.processes.items()
        }

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.kill()


def git(repo: Path, *args: str) -> str:
    """git in a test's repository, as a fixed test author."""
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
