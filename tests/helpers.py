"""Helpers to run real service processes in tests."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from grpc import aio

from arc_common.channel import create_channel
from tests.conftest import REPO_ROOT


class ServiceProcess:
    """``python -m services.<name>`` on a free port, as a user starts it. One still running
    when the interpreter exits (its test timed out before its cleanup) is killed then, so
    no service outlives the test run."""

    def __init__(
        self, module: str, home: Path, *, env: dict[str, str] | None = None, port: int = 0
    ) -> None:
        self.module = module
        self.home = home
        self.env = {**os.environ, **(env or {})}
        self.port_file = home / f".{module.rsplit('.', 1)[-1]}.port"
        self.process: subprocess.Popen[str] | None = None
        self.log_path = home / f"{module.rsplit('.', 1)[-1]}.log"
        self.port = port
        self.fixed_port = port

    async def start(self, startup_seconds: float = 60) -> int:
        self.home.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.module,
                "--port",
                str(self.fixed_port),
                "--home",
                str(self.home),
                "--port-file",
                str(self.port_file),
            ],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=log,
            text=True,
        )
        _started.add(self)
        log.close()
        self.port = await asyncio.to_thread(self._wait_port, startup_seconds)
        return self.port

    def _wait_port(self, timeout: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.port_file.exists() and self.port_file.read_text().strip():
                return int(self.port_file.read_text())
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.module} exited with {self.process.returncode}:\n{self.log()}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"{self.module} did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    async def signal_and_wait(self, sig: int = signal.SIGTERM, wait_seconds: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return await asyncio.to_thread(self.process.wait, wait_seconds)

    def kill(self) -> None:
        _started.discard(self)
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def channel(self, token: str | None) -> aio.Channel:
        return create_channel(f"127.0.0.1:{self.port}", token=token, default_timeout=15)


_started: set[ServiceProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    for service in list(_started):
        service.kill()


def sandbox_reachable_home(prefix: str) -> Path:
    """A workspace the executor's sandbox user can read (pytest's tmp folders are 0700),
    on a machine whose Python installation it can reach: what an operator sets up once
    (docs/security.md); pyenv under a 0700 /root gets o+x."""
    if os.geteuid() == 0:
        for path in (Path(sysconfig.get_paths()["stdlib"]), Path(sys.executable).resolve()):
            for folder in reversed(path.parents):
                mode = folder.stat().st_mode
                if not mode & 0o001:
                    folder.chmod((mode & 0o7777) | 0o001)
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    return home


@dataclass
class OneMachine:
    """The four services as processes in one workspace: one machine of ``gpus``
    simulated GPUs (none reserved), its executor reading ``data_root``."""

    scheduler: ServiceProcess
    executor: ServiceProcess
    gpu: ServiceProcess
    governance: ServiceProcess


@asynccontextmanager
async def one_machine(home: Path, data_root: Path, *, gpus: int) -> AsyncIterator[OneMachine]:
    gpu = ServiceProcess(
        "services.gpu_manager",
        home,
        env={
            "ARC_GPU_MANAGER_BACKEND": "simulated",
            "ARC_GPU_MANAGER_SIMULATED_COUNT": str(gpus),
            "ARC_GPU_MANAGER_RESERVED_GPUS": "[]",
        },
    )
    governance = ServiceProcess("services.governance", home)
    processes = [gpu, governance]
    try:
        await gpu.start()
        await governance.start()
        executor = ServiceProcess(
            "services.executor",
            home,
            env={
                "ARC_EXECUTOR_GPU_MANAGER_ADDRESS": f"127.0.0.1:{gpu.port}",
                "ARC_EXECUTOR_DATA_ROOT": str(data_root),
            },
        )
        processes.append(executor)
        await executor.start()
        node = {
            "name": "m0",
            "gpu_manager": f"127.0.0.1:{gpu.port}",
            "executor": f"127.0.0.1:{executor.port}",
        }
        scheduler = ServiceProcess(
            "services.scheduler",
            home,
            env={
                "ARC_SCHEDULER_NODES": json.dumps([node]),
                "ARC_SCHEDULER_GOVERNANCE_ADDRESS": f"127.0.0.1:{governance.port}",
            },
        )
        processes.append(scheduler)
        await scheduler.start()
        yield OneMachine(scheduler, executor, gpu, governance)
    finally:
        for process in reversed(processes):
            process.kill()
