"""Checkpoints do not pile up: when an attempt completes, the checkpoints of the job's
earlier attempts go (the completed one carried the best so far into its own folder), and
a workspace over its checkpoint quota starts no run (RESOURCE_EXHAUSTED, with what to
delete). Blocking; called off the loop."""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from pathlib import Path

from arc_common.errors import ResourceExhaustedError

logger = logging.getLogger(__name__)

RUNS_DIR = "runs"
ATTEMPT = re.compile(r"^attempt-(\d+)$")
CHECKPOINT_FILE = re.compile(r"^\.?[A-Za-z0-9_.-]+\.pt(\.[a-z0-9]+)?(\.tmp)?$")
SIZE_TTL_SECONDS = 30.0


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def earlier_attempts(home: Path, checkpoint_dir: Path) -> list[Path]:
    """The checkpoint files of the attempts before the one whose folder is given."""
    attempt = checkpoint_dir.parent
    job = attempt.parent
    runs = (home / RUNS_DIR).resolve()
    current = ATTEMPT.match(attempt.name)
    if current is None or job.parent.resolve() != runs or job.is_symlink():
        return []
    out: list[Path] = []
    for other in job.iterdir():
        number = ATTEMPT.match(other.name)
        if number is None or int(number.group(1)) >= int(current.group(1)):
            continue
        folder = other / "checkpoints"
        if other.is_symlink() or folder.is_symlink() or not folder.is_dir():
            continue
        out += [f for f in folder.iterdir() if CHECKPOINT_FILE.match(f.name) and _regular(f)]
    return out


def drop_earlier_attempts(home: Path, checkpoint_dir: Path) -> int:
    """Delete them; how many bytes that freed."""
    freed = 0
    for path in earlier_attempts(home, checkpoint_dir):
        try:
            freed += path.lstat().st_size
            path.unlink()
        except OSError as exc:
            logger.warning("could not delete %s: %s", path, exc)
    return freed


class Quota:
    """The bytes under runs/ (measured at most every SIZE_TTL_SECONDS) against a limit."""

    def __init__(self, home: Path, limit_gb: float) -> None:
        self._runs = home / RUNS_DIR
        self._limit = int(limit_gb * 1e9)
        self._measured = (0, -SIZE_TTL_SECONDS)

    def used(self) -> int:
        size, when = self._measured
        if time.monotonic() - when < SIZE_TTL_SECONDS:
            return size
        size = 0
        for folder, _dirs, files in os.walk(self._runs):
            for name in files:
                try:
                    size += os.lstat(os.path.join(folder, name)).st_size
                except OSError:
                    continue
        self._measured = (size, time.monotonic())
        return size

    def check(self) -> None:
        if self._limit <= 0:
            return
        used = self.used()
        if used >= self._limit:
            raise ResourceExhaustedError(
                f"runs/ holds {used / 1e9:.1f} GB, at or over the checkpoint quota "
                f"({self._limit / 1e9:.1f} GB, ARC_EXECUTOR_CHECKPOINT_QUOTA_GB): delete "
                "checkpoints (arc checkpoints delete PATH, or keep FOLDER --best N) and submit "
                "again",
                field="checkpoint_quota_gb",
            )
