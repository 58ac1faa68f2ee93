"""Trainers and tool children as processes of this machine.

A trainer gets its own process group (so a stop reaches every DataLoader worker),
``CUDA_VISIBLE_DEVICES`` from its lease, no shell, stdout/stderr in the run's log_dir and
a separate pipe for its messages. It is forked from the warm pool (torch already
imported) when the pool is up, else started cold with ``python -m``. A prepared trainer
reads its GPUs from its stdin: one JSON line, written by ``activate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Protocol

from services.executor.launcher import Launched, Locator, ToolCall, ToolExit, TrainerLaunch
from services.executor.procfs import is_that_run, kill_group, process_group_members
from services.executor.procfs import process_start_time as start_time
from services.executor.warm import PoolUnavailable, WarmPool

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINER_MODULE = "services.executor.trainer"
TOOL_MODULE = "services.executor.tools.worker"
PIPE_LIMIT = 16 * 1024 * 1024


class TrainerProcess(Protocol):
    """A cold ``asyncio.subprocess.Process`` or a ``WarmProcess`` forked by the pool."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


def child_env(gpu_indices: Sequence[int]) -> dict[str, str]:
    """Our environment without the services' own settings (tokens among them), with
    only the given GPUs visible."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARC_")}
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_indices)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class LocalTrainer:
    """A trainer process here: its metrics pipe's read end and, while it is prepared, the
    write end of its stdin."""

    def __init__(
        self, process: TrainerProcess, read_fd: int, standby: int | None, log_dir: Path
    ) -> None:
        self.process = process
        self.log_dir = log_dir
        self._read_fd: int | None = read_fd
        self._standby = standby
        self._locator = Locator(process.pid, start_time(process.pid))

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def locator(self) -> Locator:
        return self._locator

    def close_standby(self) -> None:
        if self._standby is not None:
            os.close(self._standby)
            self._standby = None

    async def messages(self) -> AsyncIterator[bytes]:
        if self._read_fd is None:
            return
        read_fd, self._read_fd = self._read_fd, None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=PIPE_LIMIT)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb")
        )
        try:
            while line := await reader.readline():
                yield line
        finally:
            transport.close()


def _local(launched: Launched) -> LocalTrainer:
    if not isinstance(launched, LocalTrainer):
        raise TypeError(f"not a local trainer: {launched!r}")
    return launched


class LocalLauncher:
    def __init__(self, pool: WarmPool | None = None) -> None:
        self.pool = pool

    async def start(self, launch: TrainerLaunch) -> LocalTrainer:
        inp, log_dir = launch.input, launch.log_dir
        standby = launch.gpu_indices is None
        input_path = await asyncio.to_thread(_write_input, launch)
        env = child_env(launch.gpu_indices or [])  # no GPUs while prepared
        read_fd, write_fd = os.pipe()
        standby_fd: int | None = None
        if standby:
            stdin_fd, standby_fd = os.pipe()
        else:
            stdin_fd = os.open(os.devnull, os.O_RDONLY)
        try:
            with (
                open(log_dir / "stdout.log", "ab") as stdout,  # noqa: ASYNC230 - instant
                open(log_dir / "stderr.log", "ab") as stderr,  # noqa: ASYNC230
            ):
                fds = (write_fd, stdout.fileno(), stderr.fileno(), stdin_fd)
                process = await self._fork(inp.run_id, str(input_path), fds, env)
                if process is None:
                    process = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        TRAINER_MODULE,
                        "--input",
                        str(input_path),
                        "--metrics-fd",
                        str(write_fd),
                        stdin=stdin_fd,
                        stdout=stdout,
                        stderr=stderr,
                        pass_fds=(write_fd,),
                        env=env,
                        cwd=str(REPO_ROOT),
                        start_new_session=True,  # its own process group: a stop reaches all
                    )
        except BaseException:
            os.close(read_fd)
            if standby_fd is not None:
                os.close(standby_fd)
            raise
        finally:
            os.close(write_fd)
            os.close(stdin_fd)
        return LocalTrainer(process, read_fd, standby_fd, log_dir)

    async def _fork(
        self, run_id: str, input_path: str, fds: tuple[int, int, int, int], env: dict[str, str]
    ) -> TrainerProcess | None:
        """A trainer forked by the warm pool; None when it must start cold."""
        if self.pool is None:
            return None
        try:
            return await self.pool.spawn(
                input_path=input_path, fds=fds, env=env, cwd=str(REPO_ROOT)
            )
        except PoolUnavailable as exc:
            logger.warning("run %s starts cold: %s", run_id, exc)
            return None

    async def activate(self, launched: Launched, gpu_indices: Sequence[int]) -> None:
        trainer = _local(launched)
        if trainer._standby is None:
            return
        try:
            line = json.dumps({"gpu_indices": list(gpu_indices)}).encode() + b"\n"
            os.write(trainer._standby, line)
        except OSError:
            pass  # the trainer is gone already; its exit says how it ended
        finally:
            trainer.close_standby()

    async def signal(self, launched: Launched, *, grace: float) -> None:
        await kill_group(launched.pid, grace=grace)

    async def wait(self, launched: Launched) -> int:
        trainer = _local(launched)
        code = await trainer.process.wait()
        trainer.close_standby()  # ended while prepared: nothing will activate it
        # Its leftovers (a DataLoader worker) hold the pipe open; what it wrote is read all
        # the same, from the pipe's buffer.
        await kill_group(trainer.pid, grace=0)
        return code

    async def error_tail(self, launched: Launched, lines: int) -> list[str]:
        return await asyncio.to_thread(_tail, _local(launched).log_dir / "stderr.log", lines)

    async def recover(self, run_id: str, locator: Locator, *, grace: float) -> bool:
        pgid = locator.pgid
        # Its trainer normally stopped as the executor died (its pipe broke); a group
        # still there (frozen, or a zombie leader's live children) is killed now.
        if pgid and process_group_members(pgid) and is_that_run(pgid, locator.started, run_id):
            await kill_group(pgid, grace=grace)
            return True
        return False

    async def run_tool(self, call: ToolCall) -> ToolExit:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            TOOL_MODULE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(REPO_ROOT),
            env=child_env(call.gpu_indices),
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(
                process.communicate(json.dumps(call.request).encode()), timeout=call.timeout
            )
        except (asyncio.CancelledError, TimeoutError):  # nothing may keep running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise
        assert process.returncode is not None
        return ToolExit(process.returncode, out, err)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()


def _write_input(launch: TrainerLaunch) -> Path:
    launch.log_dir.mkdir(parents=True, exist_ok=True)
    Path(launch.input.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    path = launch.log_dir / f"{launch.input.run_id}.input.json"
    path.write_text(launch.input.model_dump_json())
    return path


def _tail(path: Path, lines: int) -> list[str]:
    if not path.exists():
        return []
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 64 * 1024))
        text = handle.read().decode(errors="replace").splitlines()
    return list(deque((line for line in text if line.strip()), maxlen=lines))
