"""Checkpoints the executor registered, and only those, may be loaded by a tool.

When its trainer reports a checkpoint, the executor writes ``<name>.pt.mac`` beside it: an
HMAC-SHA256 over the checkpoint's workspace-relative path and its SHA-256, under a key kept
in the secrets directory (``arc_common.keys``), which no tool can reach. A ``.sha256`` file
anyone can compute proves nothing; this MAC proves the executor saw the engine's own trainer
write these bytes at this path. A tool verifies it before the bytes are loaded (and the
loader checks the bytes it reads hash to the verified digest, so nothing can be swapped in
between).

The executor also records who submitted each job whose files it writes: ``runs/<job>/.owner``
holds the submitter's name and an HMAC over (folder, name). Tools let an agent delete or
write only in the folders of its own jobs (``owner``); a folder without a valid record
(copied in by hand, or written before owners were kept) belongs to the operator.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from arc_common.errors import ArcError, NotFoundError, PermissionDeniedError
from arc_common.keys import load_key
from arc_common.paths import resolve_in_root
from arc_common.untrusted import read_text_no_follow, sha256_no_follow, write_no_follow

MAC_SUFFIX = ".mac"
KEY_NAME = "checkpoints"
RUNS_DIR = "runs"
OWNER_FILE = ".owner"
SEAL_FILE = ".sealed"


def mac_path(path: Path) -> Path:
    return path.with_name(path.name + MAC_SUFFIX)


class CheckpointRegistry:
    def __init__(self, home: Path) -> None:
        self.home = home.resolve()
        self._key = load_key(self.home, KEY_NAME)

    def _mac(self, relative: str, sha256: str) -> str:
        message = f"arc-checkpoint-v1\n{relative}\n{sha256}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _relative(self, path: Path) -> str | None:
        """The workspace-relative path of a checkpoint under runs/, else None."""
        resolved = Path(os.path.realpath(path))
        if not resolved.is_relative_to(self.home / RUNS_DIR) or resolved.suffix != ".pt":
            return None
        return str(resolved.relative_to(self.home))

    def _job_folder(self, path: Path) -> Path | None:
        """``runs/<job>`` for a path inside it, else None."""
        resolved = Path(os.path.realpath(path))
        if not resolved.is_relative_to(self.home / RUNS_DIR):
            return None
        parts = resolved.relative_to(self.home / RUNS_DIR).parts
        return self.home / RUNS_DIR / parts[0] if parts else None

    def _owner_mac(self, folder: Path, owner: str) -> str:
        message = f"arc-owner-v1\n{folder.relative_to(self.home)}\n{owner}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def owner(self, path: Path) -> str:
        """Who submitted the job whose folder holds ``path``; "" when no valid record says
        (then only an operator or a service may change it). Blocking."""
        folder = self._job_folder(path)
        if folder is None:
            return ""
        try:
            owner, recorded = read_text_no_follow(folder / OWNER_FILE).split("\n")[:2]
        except (OSError, UnicodeDecodeError, ValueError):
            return ""
        return owner if hmac.compare_digest(recorded, self._owner_mac(folder, owner)) else ""

    def claim(self, path: Path, owner: str) -> None:
        """Record ``owner`` as the submitter of the job whose folder holds ``path``; the
        first claim stands (a job's folder never changes hands). Blocking."""
        folder = self._job_folder(path)
        if folder is None or not owner or "\n" in owner or self.owner(path):
            return
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{OWNER_FILE}.tmp"
        tmp.write_text(f"{owner}\n{self._owner_mac(folder, owner)}\n")
        tmp.replace(folder / OWNER_FILE)

    def _seal_mac(self, folder: Path, data: Path) -> str:
        message = f"arc-sealed-v1\n{folder.relative_to(self.home)}\n{data}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def seal(self, path: Path, data: Path) -> None:
        """Record that the job whose folder holds ``path`` seals the test split of
        ``data`` (resolved); the first record stands (services.executor.sealed). Blocking."""
        folder = self._job_folder(path)
        if folder is None:
            return
        if self.sealed_data(path) is None:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f"{SEAL_FILE}.tmp"
            tmp.write_text(f"{data}\n{self._seal_mac(folder, data)}\n")
            tmp.replace(folder / SEAL_FILE)
        # Its figures and scores on the test split are for the executor's user alone: a
        # sandboxed trainer of another job (which knows this job's id) may not read them.
        folder.chmod(0o700)

    def sealed_data(self, path: Path) -> Path | None:
        """The dataset whose test split the job holding ``path`` seals, or None. Blocking."""
        folder = self._job_folder(path)
        if folder is None:
            return None
        try:
            data, recorded = read_text_no_follow(folder / SEAL_FILE).split("\n")[:2]
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        valid = hmac.compare_digest(recorded, self._seal_mac(folder, Path(data)))
        return Path(data) if valid else None

    def register(self, path: Path, sha256: str) -> bool:
        """Record that the engine wrote ``sha256`` at ``path``; False (nothing written)
        for a path that is no checkpoint under runs/. Blocking: call it off the loop."""
        relative = self._relative(path)
        if relative is None or len(sha256) != 64:
            return False
        target = mac_path(path)
        tmp = target.with_name(f".{target.name}.tmp")
        # The folder may be a sandboxed trainer's: a link it planted is not followed.
        write_no_follow(tmp, self._mac(relative, sha256) + "\n")
        tmp.replace(target)
        return True

    def register_reported(self, checkpoint_dir: str, relative: str, sha256: str) -> bool:
        """Register a checkpoint a trainer reports, only if it lies in its run's own
        folder (``checkpoint_dir``, workspace-relative). Blocking."""
        try:
            folder = resolve_in_root(self.home, checkpoint_dir, field="path")
            path = resolve_in_root(self.home, relative, field="path")
            return path.parent == folder and self.register(path, sha256)
        except (ArcError, OSError):
            return False

    def verify(self, path: Path, *, field: str) -> str:
        """The checkpoint's SHA-256 when the executor registered these bytes at this path;
        else PermissionDeniedError naming ``field``. Blocking (it hashes the file)."""
        relative = self._relative(path)
        shown = str(path.relative_to(self.home)) if path.is_relative_to(self.home) else path.name
        if relative is None:
            raise PermissionDeniedError(
                f"{field} must name a checkpoint (*.pt) under {RUNS_DIR}/ (got {shown!r})",
                field=field,
            )
        resolved = Path(os.path.realpath(path))
        if not resolved.is_file():
            raise NotFoundError(f"no checkpoint at {shown!r}", field=field)
        try:
            recorded = read_text_no_follow(mac_path(resolved)).strip()
        except (OSError, UnicodeDecodeError):
            recorded = ""
        try:
            digest = sha256_no_follow(resolved)
        except OSError as exc:  # swapped for a FIFO or a link meanwhile
            raise PermissionDeniedError(
                f"{field} {shown!r} cannot be read as a checkpoint: {exc.strerror}", field=field
            ) from None
        if not recorded or not hmac.compare_digest(recorded, self._mac(relative, digest)):
            raise PermissionDeniedError(
                f"{field} {shown!r} is not a checkpoint the executor registered "
                "(only checkpoints its trainers wrote can be loaded)",
                field=field,
            )
        return digest
