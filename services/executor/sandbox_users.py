"""A uid of its own for each sandboxed trainer (when the executor runs as root).

Runs that shared one user could signal, trace or rewrite each other, and a process that
left its group (``setsid``) would outlive a stop. With a uid per run, the run is every
process of that uid: when it ends, all of them are killed in one ``kill(-1)`` made as that
uid, its folders go back to the executor's user, and only then may the uid serve another
run. The uids come from ``ARC_EXECUTOR_SANDBOX_UIDS``, a range no account of the machine
uses (systemd's DynamicUser range by default); each also is the run's gid. Blocking
functions are called off the loop."""

from __future__ import annotations

import logging
import os
import random
import re
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from arc_common.errors import ResourceExhaustedError
from arc_common.untrusted import chown_tree_no_follow

logger = logging.getLogger(__name__)

RANGE = re.compile(r"^(\d+)-(\d+)$")
MAX_UID = 2**31 - 2
KILL_ROUNDS = 20


def parse_range(text: str) -> range:
    """``"first-last"`` as a range of uids (ValueError naming what is wrong); "" is empty."""
    if not text:
        return range(0)
    match = RANGE.match(text.strip())
    if match is None:
        raise ValueError(f"must be 'first-last' (two uids), got {text!r}")
    first, last = int(match.group(1)), int(match.group(2))
    if not 1000 <= first <= last <= MAX_UID:
        raise ValueError(f"must satisfy 1000 <= first <= last <= {MAX_UID}, got {text!r}")
    return range(first, last + 1)


def process_uids() -> dict[int, int]:
    """pid -> effective uid of every process (the owner of its /proc entry)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out[int(entry)] = os.stat(f"/proc/{entry}").st_uid
            except OSError:
                continue
    return out


# Run as root, it becomes the uid and kills everything that uid may signal but itself.
_KILL_ALL = (
    "import os, signal, sys; uid = int(sys.argv[1]); os.setgroups([]); os.setgid(uid); "
    "os.setuid(uid); os.kill(-1, signal.SIGKILL)"
)


def kill_uid(uid: int) -> None:
    """Every process of ``uid`` SIGKILLed (a fork bomb too: ``kill(-1)`` reaches them all
    at once), repeated until /proc shows none."""
    for _ in range(KILL_ROUNDS):
        if uid not in process_uids().values():
            return
        subprocess.run(
            [sys.executable, "-S", "-c", _KILL_ALL, str(uid)], env={}, check=False, timeout=30
        )
    logger.error("processes of sandbox uid %d survive %d kills", uid, KILL_ROUNDS)


def hand_back(folders: Iterable[Path]) -> None:
    """The folders a sandboxed run wrote become the executor's user's again."""
    for folder in folders:
        if folder.is_dir() and not folder.is_symlink():
            chown_tree_no_follow(folder, os.geteuid(), os.getegid())


class SandboxUsers:
    def __init__(self, uids: range) -> None:
        self.uids = uids
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def allocate(self) -> int:
        """A uid of the range that no run holds and no process has."""
        running = set(process_uids().values())
        with self._lock:
            free = [uid for uid in self.uids if uid not in self._held and uid not in running]
            if not free:
                raise ResourceExhaustedError(
                    f"all {len(self.uids)} sandbox uids (ARC_EXECUTOR_SANDBOX_UIDS) are in use",
                    field="sandbox_uids",
                )
            uid = random.choice(free)  # a uid comes back seldom, whatever it left in /tmp
            self._held.add(uid)
        return uid

    def release(self, uid: int, folders: Iterable[Path]) -> None:
        """The run of ``uid`` ended: its processes killed, its folders the executor's."""
        if uid not in self.uids:
            return
        kill_uid(uid)
        hand_back(folders)
        with self._lock:
            self._held.discard(uid)

    def sweep(self) -> int:
        """At start: nothing of an earlier executor's sandboxes survives it. How many uids
        had processes."""
        found = {uid for uid in process_uids().values() if uid in self.uids}
        for uid in found:
            kill_uid(uid)
        return len(found)
