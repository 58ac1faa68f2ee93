"""Secret keys the services keep out of the workspace's readable files.

Keys live in the secrets directory: ``ARC_SECRETS_DIR``, by default ``$ARC_HOME/.secrets``
(mode 0700, each key 0600). No tool can reach a dot-directory of the workspace, so an agent
cannot read or replace a key through the API; an operator who wants the keys off the
workspace's filesystem points ``ARC_SECRETS_DIR`` elsewhere (docs/security.md).
"""

from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path

SECRETS_DIR_NAME = ".secrets"
KEY_BYTES = 32


def secrets_dir(home: Path, configured: Path | None = None) -> Path:
    chosen = configured or Path(os.environ.get("ARC_SECRETS_DIR", "") or home / SECRETS_DIR_NAME)
    chosen.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(chosen, 0o700)
    return chosen


def load_key(home: Path, name: str, *, configured: Path | None = None) -> bytes:
    """The key ``name`` (created on first use, 32 random bytes); the same for every
    service of the workspace that asks for it."""
    folder = secrets_dir(home, configured)
    path = folder / f"{name}.key"
    with (folder / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(secrets.token_bytes(KEY_BYTES))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            key = path.read_bytes()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if len(key) != KEY_BYTES:
        raise RuntimeError(f"secret key {path} is damaged ({len(key)} bytes, expected 32)")
    return key
