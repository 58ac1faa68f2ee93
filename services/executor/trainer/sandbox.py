"""The trainer of a code-defined run leaves the executor's privileges before it imports
repository code: a plain environment (no credentials), its own folder as cwd and HOME,
resource limits, and, when the executor runs as root, another user for good (setuid sets
the real, effective and saved ids, so the code cannot take root back)."""

from __future__ import annotations

import ctypes
import os
import resource

from services.executor.protocol import Sandbox

PR_SET_NO_NEW_PRIVS = 38  # linux/prctl.h

# What a trainer needs from the environment; everything else (tokens, ARC_* settings,
# cloud credentials) stays behind.
KEPT = (
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "PYTHONUNBUFFERED",
    "PYTHONHASHSEED",
    "CUDA_VISIBLE_DEVICES",
    "CUBLAS_WORKSPACE_CONFIG",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "LD_LIBRARY_PATH",
    "TORCH_HOME",
)


def _limit(which: int, value: int) -> None:
    if value > 0:
        resource.setrlimit(which, (value, value))


def _no_new_privileges() -> None:
    """No setuid binary it runs may raise its privileges (nor leave its uid)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def enter(box: Sandbox) -> None:
    env = {key: os.environ[key] for key in KEPT if key in os.environ}
    # Pretrained weights stay where the executor's user keeps them, whatever HOME becomes.
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    env.setdefault("TORCH_HOME", os.path.join(cache, "torch"))
    env["HOME"] = env["TMPDIR"] = box.home  # its temporary files stay in its folder
    os.environ.clear()
    os.environ.update(env)
    _limit(resource.RLIMIT_NOFILE, box.open_files)
    _limit(resource.RLIMIT_NPROC, box.processes)
    _limit(resource.RLIMIT_AS, box.address_space_mb * 1024 * 1024)
    _no_new_privileges()
    if box.gid >= 0:
        os.setgroups([])
        os.setgid(box.gid)
    if box.uid >= 0:
        os.setuid(box.uid)
    os.chdir(box.home)
