"""Where torchvision's pretrained weights must be for a trainer on this machine: the
file each variant loads from the torch cache (the trainer never downloads). Found once,
by a child that imports torchvision, so that the executor itself does not load torch."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from arc_common.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    NotFoundError,
    UnavailableError,
)
from arc_common.models import ArchitectureFamily, ArchitectureSpec

FIELD = "architecture.pretrained"
LIST_SECONDS = 120.0
# The trainer's own rule (services.executor.trainer.models.weights_file), for every variant.
_LIST = """
import json, os, torch
from torchvision import models
files = {}
for name in models.list_models(module=models):
    try:
        files[name] = os.path.basename(str(models.get_model_weights(name).DEFAULT.url))
    except Exception:
        pass
print(json.dumps({"hub": str(torch.hub.get_dir()), "files": files}))
"""


class PretrainedWeights:
    def __init__(self) -> None:
        self._known: tuple[Path, dict[str, str]] | None = None
        self._lock = asyncio.Lock()

    async def _files(self) -> tuple[Path, dict[str, str]]:
        async with self._lock:
            if self._known is None:
                child = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    _LIST,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                try:
                    out, _ = await asyncio.wait_for(child.communicate(), LIST_SECONDS)
                except TimeoutError:
                    child.kill()
                    await child.wait()
                    raise DeadlineExceededError(
                        "could not list torchvision's weights in time", field=FIELD
                    ) from None
                try:
                    listed = json.loads(out)
                    self._known = (Path(listed["hub"]) / "checkpoints", dict(listed["files"]))
                except (ValueError, KeyError, TypeError):
                    raise UnavailableError(
                        f"could not list torchvision's weights (exit {child.returncode})",
                        field=FIELD,
                    ) from None
            return self._known

    async def check(self, architecture: ArchitectureSpec) -> None:
        """FAILED_PRECONDITION naming the file when pretrained weights are not on disk."""
        if not architecture.pretrained or architecture.family is ArchitectureFamily.CUSTOM:
            return
        folder, files = await self._files()
        name = files.get(architecture.variant)
        if name is None:
            raise NotFoundError(
                f"{FIELD}: torchvision has no pretrained weights for {architecture.variant!r}",
                field=FIELD,
            )
        path = folder / name
        if not await asyncio.to_thread(path.is_file):
            raise FailedPreconditionError(
                f"{FIELD}: the weights of {architecture.variant} are not on this machine: "
                f"copy {name} to {path} (or set TORCH_HOME where it is), or set pretrained: "
                "false; nothing is downloaded at run time",
                field=FIELD,
            )
