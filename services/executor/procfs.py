"""Local processes and process groups, read from /proc (Linux).

A run's trainer leads a process group of its own (its DataLoader workers join it), so
stopping a run means signalling the group and watching /proc until none of it is left:
the grandchildren are not our children, so there is nothing to await.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

logger = logging.getLogger(__name__)


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name ([] when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()
    except OSError:
        return []


def process_group_members(pgid: int) -> list[int]:
    """PIDs (not zombies) whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_start_time(pid: int) -> int:
    """When ``pid`` started (clock ticks since boot; 0 if it is gone): with the pid, it
    tells a process from a later one that reuses the number."""
    try:
        return int(_stat_fields(pid)[19])
    except (IndexError, ValueError):
        return 0


def is_that_run(pgid: int, started: int, run_id: str) -> bool:
    """The process group of a run from before a restart is still that run's: its leader
    started when recorded (a forked warm trainer), or a member's command line names the
    run (a cold one, or a workspace from before start times were recorded)."""
    if started and process_start_time(pgid) == started:
        return True
    return any(run_id in cmdline(pid) for pid in process_group_members(pgid))


async def kill_group(pgid: int, *, grace: float) -> None:
    """SIGTERM to the group, up to ``grace`` seconds, then SIGKILL; until none is left."""
    if not process_group_members(pgid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and process_group_members(pgid):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    for _ in range(100):
        if not process_group_members(pgid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        await asyncio.sleep(0.05)
    logger.error("process group %d survived SIGKILL", pgid)


def oom_kills(proc: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """How many processes the kernel's out-of-memory killer has killed in our memory
    cgroup (v2 ``memory.events``, v1 ``memory.oom_control``); None where it cannot tell.
    A trainer killed by SIGKILL that nobody here sent, while this count grew, ran out of
    host memory."""
    try:
        with open(proc) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2, unified
            candidates.append((os.path.join(root, path.lstrip("/"), "memory.events"), "oom_kill"))
        elif "memory" in controllers.split(","):
            base = os.path.join(root, "memory", path.lstrip("/"))
            candidates.append((os.path.join(base, "memory.oom_control"), "oom_kill"))
    for file, key in candidates:
        with contextlib.suppress(OSError, ValueError), open(file) as handle:
            for row in handle.read().splitlines():
                name, _, value = row.partition(" ")
                if name == key:
                    return int(value)
    return None
