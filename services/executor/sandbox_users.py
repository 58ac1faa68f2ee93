"""A uid of its own for each sandboxed trainer (when the executor runs as root).

Runs that shared one user could signal, trace or rewrite each other, and a process that
left its group (``setsid``) would outlive a stop. With a uid per run, the run is every
process of that uid: when it ends, all of them are killed in one ``kill(-1)`` made as that
uid, its folders go back to the executor's user, and only then may the uid serve another
run. The uids come from ``ARC_EXECUTOR_SANDBOX_UIDS``, a range that systemd leaves
unassigned (60600-61183 by default); a uid the machine knows (passwd, NSS) is never
drawn nor killed. Each is also the run's gid. Blocking
functions are called off the loop."""

from __future__ import annotations

import logging
import os
import pwd
import random
import re
import subprocess
import sys
import threading
import time
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


def _uids_of(pid: str) -> set[int]:
    """The real, effective and saved uids of a live process (none for a zombie or one
    that is gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
    except OSError:
        return set()
    if fields.get("State", "").strip().startswith("Z"):
        return set()  # dead already; only its parent's wait is left
    return {int(uid) for uid in fields.get("Uid", "").split()[:3]}


def process_uids() -> dict[int, set[int]]:
    """pid -> the uids of every live process."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (uids := _uids_of(entry)):
            out[int(entry)] = uids
    return out


def _running(uid: int) -> bool:
    return any(uid in uids for uids in process_uids().values())


# Run as root, it becomes the uid and kills everything that uid may signal but itself.
_KILL_ALL = (
    "import os, signal, sys; uid = int(sys.argv[1]); os.setgroups([]); os.setgid(uid); "
    "os.setuid(uid); os.kill(-1, signal.SIGKILL)"
)


def kill_uid(uid: int) -> None:
    """Every process of ``uid`` SIGKILLed (a fork bomb too: ``kill(-1)`` reaches them all
    at once), once, then again while /proc shows any."""
    for round_ in range(KILL_ROUNDS):
        if round_ and not _running(uid):
            return
        subprocess.run(
            [sys.executable, "-S", "-c", _KILL_ALL, str(uid)], env={}, check=False, timeout=30
        )
        time.sleep(0.01 * round_)  # SIGKILL is delivered, not awaited
    logger.error("processes of sandbox uid %d survive %d kills", uid, KILL_ROUNDS)


def _account(uid: int) -> bool:
    """The machine knows ``uid`` (passwd, or NSS such as systemd's dynamic users)."""
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def hand_back(folders: Iterable[Path]) -> None:
    """The folders a sandboxed run wrote become the executor's user's again."""
    for folder in folders:
        if folder.is_dir() and not folder.is_symlink():
            chown_tree_no_follow(folder, os.geteuid(), os.getegid(), close=True)


class SandboxUsers:
    def __init__(self, uids: range) -> None:
        self.uids = uids
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def allocate(self) -> int:
        """A uid of the range that no run holds and no process has."""
        running = set().union(*process_uids().values())
        with self._lock:
            free = [uid for uid in self.uids if uid not in self._held and uid not in running]
            random.shuffle(free)  # a uid comes back seldom, whatever it left in /tmp
            for uid in free:
                if not _account(uid):
                    self._held.add(uid)
                    return uid
        raise ResourceExhaustedError(
            f"all {len(self.uids)} sandbox uids (ARC_EXECUTOR_SANDBOX_UIDS) are in use",
            field="sandbox_uids",
        )

    def release(self, uid: int, folders: Iterable[Path]) -> None:
        """The run of ``uid`` ended: its processes killed, its folders the executor's."""
        if uid not in self.uids:
            return
        try:
            kill_uid(uid)
            hand_back(folders)
        except (OSError, subprocess.SubprocessError) as exc:  # the run ends all the same
            logger.error("sandbox uid %d: could not clean up after its run: %s", uid, exc)
        finally:
            with self._lock:
                self._held.discard(uid)

    def sweep(self) -> int:
        """At start: nothing of an earlier executor's sandboxes survives it. How many uids
        had processes."""
        every = set().union(*process_uids().values())
        found = {uid for uid in every if uid in self.uids and not _account(uid)}
        for uid in found:
            kill_uid(uid)
        return len(found)
