"""Where trainers and tool children run: the seam between the run state machine and processes.

``runs.RunManager`` decides what a run is (its state, its lease, how it ended) and never
touches a process; a ``Launcher`` starts the trainer, hands a prepared one its GPUs, stops
it, reports its exit, and after a restart finds and kills what a dead executor left
behind. ``tools.service.Tools`` runs its torch children through the same launcher.
``local_launcher.LocalLauncher`` forks on this machine (from the warm pool, or cold); a
run placed anywhere else (a cluster) is one more class with these methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.executor.protocol import TrainerInput


@dataclass(frozen=True)
class TrainerLaunch:
    """A run's trainer to start. ``gpu_indices`` None: prepared ahead of its GPUs (it
    builds its model and waits for ``Launcher.activate``)."""

    input: TrainerInput
    log_dir: Path
    gpu_indices: Sequence[int] | None


@dataclass(frozen=True)
class Locator:
    """Where a launch runs, as the store keeps it to find it again after a restart: the
    local process group and its leader's start time (0, 0 where nothing was started)."""

    pgid: int = 0
    started: int = 0


class Launched(Protocol):
    """A trainer that was started, wherever it runs."""

    @property
    def pid(self) -> int:
        """Its process id where it has one here (``Run.pid``), else 0."""
        ...

    @property
    def locator(self) -> Locator: ...

    def messages(self) -> AsyncIterator[bytes]:
        """Its pipe protocol lines (``protocol.TrainerMessage`` as JSON), until it ends."""
        ...


@dataclass(frozen=True)
class ToolCall:
    """A torch tool child (``tools.worker``): ``request`` as JSON on its stdin."""

    request: dict[str, Any]
    gpu_indices: Sequence[int]
    timeout: float


@dataclass(frozen=True)
class ToolExit:
    returncode: int
    stdout: bytes
    stderr: bytes


class Launcher(Protocol):
    async def start(self, launch: TrainerLaunch) -> Launched:
        """Start a trainer (prepare it, when it has no GPUs yet)."""
        ...

    async def activate(self, launched: Launched, gpu_indices: Sequence[int]) -> None:
        """Hand a prepared trainer its GPUs (once; it may have died meanwhile)."""
        ...

    async def signal(self, launched: Launched, *, grace: float) -> None:
        """Stop all it started: SIGTERM, up to ``grace`` seconds, then SIGKILL."""
        ...

    async def wait(self, launched: Launched) -> int:
        """Its exit code once it and everything it started are gone."""
        ...

    async def error_tail(self, launched: Launched, lines: int) -> list[str]:
        """The last non-blank lines it wrote to stderr."""
        ...

    async def recover(self, run_id: str, locator: Locator, *, grace: float) -> bool:
        """After a restart: kill what is left of ``run_id``'s launch; True if anything was."""
        ...

    async def run_tool(self, call: ToolCall) -> ToolExit:
        """Run a tool child to its end; TimeoutError (it is killed) past ``call.timeout``,
        and it is killed too when the caller is cancelled."""
        ...

    async def close(self) -> None: ...
