"""Workspace-relative paths: checked lexically in the models, resolved on disk in the services."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path, PurePosixPath

from arc_common.errors import InvalidArgumentError, PermissionDeniedError

MAX_PATH_LENGTH = 1024
MAX_NAME_BYTES = 255  # what the filesystem allows for one name


@functools.lru_cache(maxsize=4096)  # every spec of a dataset names the same path
def check_relative_path(value: str) -> str:
    """Reject paths that are absolute, empty, or climb out with ``..``; return it normalized."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_PATH_LENGTH:
        raise ValueError(f"must be at most {MAX_PATH_LENGTH} characters")
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    if value.startswith(("/", "\\")) or (len(value) > 1 and value[1] == ":"):
        raise ValueError("must be relative to the workspace, not absolute")
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
        raise ValueError(f"each name in the path must be at most {MAX_NAME_BYTES} bytes")
    if ".." in parts:
        raise ValueError("must not contain '..' (it would escape the workspace)")
    normalized = str(PurePosixPath(*parts)) if parts else "."
    if normalized == ".":
        raise ValueError("must name something inside the workspace, not the workspace itself")
    return normalized


def resolve_data(workspace: Path, data_root: Path | None, relative: str, *, field: str) -> Path:
    """A dataset inside the workspace, or else inside the configured data root."""
    try:
        inside: Path | None = resolve_in_root(workspace, relative, field=field)
    except InvalidArgumentError:
        if data_root is None:
            raise
        inside = None
    if (inside is None or not inside.exists()) and data_root is not None:
        return resolve_in_root(data_root, relative, field=field)
    assert inside is not None
    # Training reads a dataset, never the services' own files.
    base = workspace.resolve()
    reason = reserved_reason(str(inside.relative_to(base))) if inside != base else None
    if reason is None:
        reason = reserved_reason(check_relative_path(relative))
    if reason is not None:
        raise PermissionDeniedError(f"{field} may not name {relative!r}: {reason}", field=field)
    return inside


def resolve_in_root(root: Path, relative: str, *, field: str) -> Path:
    """Resolve ``relative`` under ``root`` following symlinks; refuse anything that escapes.

    The lexical check alone is not enough: a symlink inside the workspace may point out of it.
    """
    try:
        checked = check_relative_path(relative)
    except ValueError as exc:
        raise InvalidArgumentError(f"{field} {exc} (got {relative!r})", field=field) from exc
    base = root.resolve()
    resolved = Path(os.path.realpath(base / checked))
    if resolved != base and not resolved.is_relative_to(base):
        raise InvalidArgumentError(
            f"{field} resolves outside {base} (through a symlink?): {relative!r}", field=field
        )
    return resolved


# What no tool and no path field may reach, anywhere in the workspace: the services'
# credentials, policy and databases, governance's snapshots and audit, and every dot-name
# (the secrets directory, .git, .dvc, temp files).
RESERVED_NAMES = frozenset({"tokens.json", "auth_token", "policy.yaml"})
RESERVED_TOP = frozenset({"governance"})
_DATABASE = re.compile(r"\.(sqlite3?|db)(-wal|-shm|-journal)?$", re.IGNORECASE)


def reserved_reason(relative: str) -> str | None:
    """Why the workspace-relative ``relative`` is reserved to the services, or None."""
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    if parts and parts[0] in RESERVED_TOP:
        return f"{parts[0]}/ belongs to governance"
    for part in parts:
        if part.startswith(".") and part not in {".", ".."}:
            return f"{part!r} is a dot-name (hidden files are the services' own)"
        if part.lower() in RESERVED_NAMES:
            return f"{part!r} is a credential or policy file of the services"
        if _DATABASE.search(part):
            return f"{part!r} is a database of the services"
    return None


# What the engine counts as an image file, wherever it looks for them.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def make_read_only(root: Path) -> None:
    """Every file under ``root`` 0444 and every folder 0555 (links left alone): a tree
    the engine made for a run to read and nobody to change. Blocking."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(0o444)
        Path(folder).chmod(0o555)
