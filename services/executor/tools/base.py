"""What every research tool shares: the paths it may touch, the checkpoints it may load,
the seal on test splits, and the child process a torch tool runs in."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from arc_common.auth import Role
from arc_common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from arc_common.models import Lease
from arc_common.models.specs import (
    DATASET_ID_PATTERN,
)
from services.executor.launcher import Launcher, ToolCall
from services.executor.leases import LeaseVerifier
from services.executor.runs import RunManager
from services.executor.sealed import SealGuard
from services.executor.settings import ExecutorSettings
from services.executor.tools.access import Access
from services.executor.tools.governed import Governed
from services.executor.tools.sources import SourceTools

SPLITS = {"train", "val", "test"}
VISUALIZATIONS = ("gradcam", "attention")
DATASET_ID = re.compile(DATASET_ID_PATTERN)


def split_of(split: str) -> str:
    """The split a tool reads: test unless named; one of train, val, test."""
    split = split or "test"
    if split not in SPLITS:
        raise InvalidArgumentError(f"split must be one of {sorted(SPLITS)}", field="split")
    return split


def dataset_id_of(given: str, data_path: str) -> str:
    """The id a report names its dataset by: the one given, else the folder's name."""
    if given and not DATASET_ID.fullmatch(given):
        raise InvalidArgumentError(
            "dataset_id must be 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit",
            field="dataset_id",
        )
    made = re.sub(r"[^A-Za-z0-9._-]", "-", Path(data_path).name).lstrip("._-")[:128]
    return given or made or "dataset"


class ToolBase:
    def __init__(
        self,
        settings: ExecutorSettings,
        governed: Governed,
        runs: RunManager,
        *,
        leases: LeaseVerifier,
        launcher: Launcher,
    ) -> None:
        self.settings = settings
        self.leases = leases
        self.launcher = launcher
        self.home = settings.home.resolve()
        self.governed = governed
        self.runs = runs
        self.access = Access(self.home, settings.data_root, settings.repositories.values())
        self.seals = SealGuard(self.home, settings.data_root, runs.checkpoints)
        self.sources = SourceTools(settings, governed, self.access, self.seals)

    async def _sealed(self, trusted: bool, *args: Any, **kwargs: Any) -> None:
        """The seal on test splits (SealGuard.check_tool), for all but a trusted caller."""
        if not trusted:
            await asyncio.to_thread(self.seals.check_tool, *args, **kwargs)

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.home))

    def _data(self, rel: str, field: str) -> Path:
        return self.access.data(field, rel)

    async def _child(self, request: dict[str, Any], lease: Lease | None) -> Any:
        """Run a torch tool in a child process, through the launcher (its own process
        group, no shell, the lease's GPUs only); killed when the caller goes away."""
        timeout = self.settings.tool_timeout_seconds
        call = ToolCall(request, lease.gpu_indices if lease is not None else [], timeout)
        try:
            done = await self.launcher.run_tool(call)
        except TimeoutError:
            raise UnavailableError(f"{request['tool']} took longer than {timeout:.0f} s") from None
        try:
            answer = json.loads(done.stdout or b"{}")
        except json.JSONDecodeError:
            answer = {}
        if done.returncode != 0 or "result" not in answer:
            message = answer.get("error") or done.stderr.decode(errors="replace").strip()[-500:]
            if answer.get("field"):  # the request asked what this checkpoint cannot do
                raise InvalidArgumentError(message, field=str(answer["field"]))
            raise FailedPreconditionError(f"{request['tool']} failed: {message}")
        return answer["result"]

    def _checkpoint(self, rel: str, field: str = "checkpoint_path") -> Path:
        path = self.access.path(field, rel)
        if path.suffix != ".pt":
            raise InvalidArgumentError(f"{field} must name a *.pt checkpoint", field=field)
        if not path.is_file():
            raise NotFoundError(f"no checkpoint at {rel!r}", field=field)
        return path

    async def _owned(self, path: Path, field: str, caller: str, role: Role) -> None:
        """An agent may delete or write only in the folders of jobs it submitted; an
        operator or a service anywhere under runs/ (registry.CheckpointRegistry.owner)."""
        if role is not Role.AGENT:
            return
        owner = await asyncio.to_thread(self.runs.checkpoints.owner, path)
        if owner != caller:
            whose = f"job of {owner!r}" if owner else "folder no agent's job wrote"
            raise PermissionDeniedError(
                f"{field} {self._rel(path)!r} is in a {whose}: an agent may change only "
                "the files of its own jobs",
                field=field,
            )

    async def _registered(self, rel: str, field: str = "checkpoint_path") -> tuple[Path, str]:
        """A checkpoint a tool may load: one the executor registered (see registry)."""
        path = self._checkpoint(rel, field)
        digest = await asyncio.to_thread(self.runs.checkpoints.verify, path, field=field)
        return path, digest
