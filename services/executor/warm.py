"""The executor's side of the warm worker pool (services.executor.trainer.pool).

``WarmPool.spawn`` hands a run's input, environment and descriptors to the pool and gets
back a ``WarmProcess`` that behaves like the ``asyncio.subprocess.Process`` of a cold start
(``pid``, ``returncode``, ``wait()``). When the pool is not there (still importing torch,
crashed, disabled) ``spawn`` raises ``PoolUnavailable`` and the run starts cold: the pool
makes starts fast, never possible.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from services.executor.procfs import alive

logger = logging.getLogger(__name__)

POOL_MODULE = "services.executor.trainer.pool"
REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_MESSAGE = 1 << 20


class PoolUnavailable(Exception):
    """The run must start cold."""


class WarmProcess:
    """A trainer forked by the pool: not our child, so its exit comes as a message."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._done = asyncio.Event()

    def _exited(self, code: int) -> None:
        self.returncode = code
        self._done.set()

    async def wait(self) -> int:
        await self._done.wait()
        assert self.returncode is not None
        return self.returncode


class WarmPool:
    def __init__(self, log_path: Path, *, ready_seconds: float = 120.0) -> None:
        self._log_path = log_path
        self._ready_seconds = ready_seconds
        self._sock: socket.socket | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._gone = asyncio.Event()
        self._waiting: dict[int, asyncio.Future[WarmProcess]] = {}
        self._live: dict[int, WarmProcess] = {}
        self._next_id = 0
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def available(self) -> bool:
        return self._sock is not None and not self._gone.is_set()

    async def start(self) -> None:
        """Start the pool process; it is ready once it has imported torch (seconds)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARC_")}
        env.pop("CUDA_VISIBLE_DEVICES", None)  # each run sets its own
        try:
            with open(self._log_path, "ab") as log:  # noqa: ASYNC230 - instant
                self._process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    POOL_MODULE,
                    "--fd",
                    str(child.fileno()),
                    pass_fds=(child.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=str(REPO_ROOT),
                    env=env,
                    start_new_session=True,
                )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        self._sock = parent
        self._reader = asyncio.create_task(self._read(), name="warm-pool-reader")

    async def wait_ready(self, seconds: float | None = None) -> bool:
        """Until the pool is warm (True) or gone (False: a crash while importing)."""
        waits = [
            asyncio.create_task(self._ready.wait()),
            asyncio.create_task(self._gone.wait()),
        ]
        try:
            await asyncio.wait(
                waits, timeout=seconds or self._ready_seconds, return_when="FIRST_COMPLETED"
            )
        finally:
            for task in waits:
                task.cancel()
        return self._ready.is_set() and self.available

    async def _read(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(self._sock, MAX_MESSAGE)
                if not data:
                    break
                self._on_message(json.loads(data))
        except (OSError, ValueError) as exc:
            logger.error("warm pool: the control socket failed: %s", exc)
        finally:
            self._on_gone()

    def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("ready"):
            self.info = message
            if message.get("cuda_initialized"):
                logger.error("warm pool initialised CUDA before forking: not using it")
                self._on_gone()
                return
            logger.info("warm pool ready in %.1f s (pid %s)", message["seconds"], message["pid"])
            self._ready.set()
        elif "exit" in message:
            process = self._live.pop(int(message["exit"]), None)
            if process is not None:
                process._exited(int(message["code"]))
        elif "id" in message:
            future = self._waiting.pop(int(message["id"]), None)
            if future is None or future.done():
                return
            if "pid" in message:
                # Registered here, before anyone awaits: its exit may be the next message.
                process = WarmProcess(int(message["pid"]))
                self._live[process.pid] = process
                future.set_result(process)
            else:
                future.set_exception(PoolUnavailable(str(message.get("error", "refused"))))

    def _on_gone(self) -> None:
        if self._gone.is_set():
            return
        self._gone.set()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(PoolUnavailable("the warm pool ended"))
        self._waiting.clear()
        # Its children outlive it (their own sessions); nobody reaps them for us now, so
        # watch /proc until they are gone.
        for process in self._live.values():
            asyncio.get_running_loop().create_task(_watch_orphan(process))
        self._live.clear()
        if self._sock is not None:
            self._sock.close()

    async def spawn(
        self, *, input_path: str, fds: tuple[int, int, int, int], env: dict[str, str], cwd: str
    ) -> WarmProcess:
        """Fork a trainer for ``input_path``; ``fds`` are its metrics pipe, stdout, stderr
        and stdin (the caller keeps and closes its own copies)."""
        if not self.available or not await self.wait_ready():
            raise PoolUnavailable("the warm pool is not running")
        assert self._sock is not None
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[WarmProcess] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        payload = json.dumps({"id": request_id, "input": input_path, "env": env, "cwd": cwd})
        try:
            socket.send_fds(self._sock, [payload.encode()], list(fds))
        except OSError as exc:
            self._waiting.pop(request_id, None)
            raise PoolUnavailable(f"cannot reach the warm pool: {exc}") from exc
        try:
            return await asyncio.wait_for(future, timeout=30)
        except TimeoutError:
            self._waiting.pop(request_id, None)
            raise PoolUnavailable("the warm pool did not answer in 30 s") from None

    async def close(self) -> None:
        if self._sock is not None and not self._gone.is_set():
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if self._process is not None and self._process.returncode is None:
            try:
                await asyncio.wait_for(self._process.wait(), timeout=5)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._on_gone()


async def _watch_orphan(process: WarmProcess) -> None:
    while alive(process.pid):  # noqa: ASYNC110 - not our child: nothing to await
        await asyncio.sleep(0.2)
    logger.warning("trainer %d outlived the warm pool; its exit status is unknown", process.pid)
    process._exited(1)
