"""apply_code_patch: a unified diff from an agent, applied to a registered git repository.

git parses the patch, not us: it is applied to a throwaway index first (``git apply
--cached``), and ``git diff --cached --raw -z --no-renames`` lists every path it would
change with its old and new mode (a rename is its old path deleted and its new path added,
a copy a new path, a quoted or spaced name comes whole). Those paths and modes are what
governance's policy checks, what ``files_changed`` reports and what the transaction
snapshots. Refused here whatever the policy says: symlinks and submodules (a link can
point anywhere), anything under ``.git/``, a path through an existing symlink (the shape
of CVE-2023-23946), a path the services reserve, binary patches. git runs without a shell,
with hooks and external config neutralised.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from arc_common.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
)
from arc_common.paths import reserved_reason

MAX_PATCH_BYTES = 1024 * 1024
MAX_PATCH_FILES = 1000  # git's parse is bounded before policy sees it
ABSENT = "000000"
REGULAR = "100644"
REFUSED_MODES = {"120000": "a symlink", "160000": "a submodule"}


@dataclass(frozen=True)
class Change:
    """One path the patch changes, as git's index sees it (``ABSENT`` on the missing side)."""

    path: str
    old_mode: str
    new_mode: str


@dataclass(frozen=True)
class PatchPlan:
    changes: list[Change]
    added: int
    removed: int
    sha256: str

    @property
    def files(self) -> list[str]:
        return [c.path for c in self.changes]

    def parameters(self) -> dict[str, Any]:
        """What governance's policy checks besides the patch text."""
        return {
            "files": self.files,
            "changes": [
                {"path": c.path, "old_mode": c.old_mode, "new_mode": c.new_mode}
                for c in self.changes
            ],
        }


def _check_path(path: str, repo: Path, repo_rel: str) -> None:
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or ".." in parts or "\\" in path:
        raise InvalidArgumentError(f"patch path {path!r} leaves the repository", field="patch")
    if any(part.lower() == ".git" for part in parts):
        raise InvalidArgumentError(f"patch path {path!r} touches .git/", field="patch")
    if reason := reserved_reason(f"{repo_rel}/{path}"):
        raise InvalidArgumentError(f"patch path {path!r} is reserved: {reason}", field="patch")
    # No component may be a symlink already: writing through it would leave the repository.
    current = repo
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise InvalidArgumentError(
                f"patch path {path!r} goes through the symlink {current.relative_to(repo)}",
                field="patch",
            )


def _raw_changes(output: str) -> list[Change]:
    """``git diff --raw -z``: ``:old new sha sha status\0path\0`` per path."""
    fields = output.split("\0")
    changes = []
    for meta, path in zip(fields[0::2], fields[1::2], strict=False):
        if not meta.startswith(":"):
            break
        old_mode, new_mode = meta[1:].split(" ")[:2]
        changes.append(Change(path, old_mode, new_mode))
    return changes


def _numstat(output: str) -> tuple[int, int]:
    added = removed = 0
    for record in output.split("\0"):
        columns = record.split("\t", 2)
        if len(columns) < 3:
            continue
        if not (columns[0].isdigit() and columns[1].isdigit()):
            raise InvalidArgumentError("binary patches are not accepted", field="patch")
        added += int(columns[0])
        removed += int(columns[1])
    return added, removed


def plan(patch: str, repo: Path, repo_rel: str) -> PatchPlan:
    """What the patch would change, parsed by git; blocking (call it off the loop)."""
    if not patch.strip():
        raise InvalidArgumentError("patch is empty", field="patch")
    if len(patch.encode()) > MAX_PATCH_BYTES:
        raise InvalidArgumentError(f"patch is larger than {MAX_PATCH_BYTES} bytes", field="patch")
    if "\nGIT binary patch" in f"\n{patch}" or "\nBinary files " in f"\n{patch}":
        raise InvalidArgumentError("binary patches are not accepted", field="patch")
    try:  # parsing only: a failure here is a malformed patch, not a conflict
        numstat = git(repo, "apply", "--numstat", "-z", "--whitespace=nowarn", "-", stdin=patch)
    except FailedPreconditionError as exc:
        raise InvalidArgumentError(exc.message, field="patch") from None
    added, removed = _numstat(numstat)
    with tempfile.TemporaryDirectory(prefix="arc-patch-") as folder:
        scratch = Path(folder)
        (scratch / "objects").mkdir()
        git(repo, "read-tree", "HEAD", scratch=scratch)
        git(repo, "apply", "--cached", "--whitespace=nowarn", "-", stdin=patch, scratch=scratch)
        raw = git(
            repo,
            "diff",
            "--cached",
            "--raw",
            "-z",
            "--no-renames",
            "--no-ext-diff",
            "--no-textconv",
            "HEAD",
            scratch=scratch,
        )
    changes = _raw_changes(raw)
    if not changes:
        raise InvalidArgumentError("patch changes no file (expected a unified diff)", field="patch")
    if len(changes) > MAX_PATCH_FILES:
        raise InvalidArgumentError(
            f"patch changes more than {MAX_PATCH_FILES} files", field="patch"
        )
    for change in changes:
        _check_path(change.path, repo, repo_rel)
        if what := REFUSED_MODES.get(change.new_mode):
            raise InvalidArgumentError(
                f"patch would make {change.path!r} {what} (mode {change.new_mode})",
                field="patch",
            )
    return PatchPlan(
        changes=changes,
        added=added,
        removed=removed,
        sha256=hashlib.sha256(patch.encode()).hexdigest(),
    )


GIT = ("git", "-c", "core.hooksPath=/dev/null", "-c", "core.symlinks=false")


def git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME="ARC agent",
        GIT_AUTHOR_EMAIL="agent@arc.local",
        GIT_COMMITTER_NAME="ARC executor",
        GIT_COMMITTER_EMAIL="executor@arc.local",
    )
    return env


def git_bytes(
    repo: Path,
    *args: str,
    stdin: str | None = None,
    scratch: Path | None = None,
    timeout: float = 120,
) -> bytes:
    """git's stdout, hooks and external config neutralised. ``scratch``: an index and an
    object store of their own there (the repository's objects readable as alternates),
    so a trial apply leaves nothing in the repository."""
    env = git_env()
    if scratch is not None:
        env["GIT_INDEX_FILE"] = str(scratch / "index")
        env["GIT_OBJECT_DIRECTORY"] = str(scratch / "objects")
        env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = str(repo / ".git" / "objects")
    try:
        process = subprocess.run(
            [*GIT, *args],
            cwd=repo,
            input=stdin.encode() if stdin is not None else None,
            capture_output=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DeadlineExceededError(
            f"git {args[0]} took longer than {timeout:.0f} s", field="patch"
        ) from None
    if process.returncode != 0:
        said = (process.stderr or process.stdout).decode(errors="replace").strip()
        raise FailedPreconditionError(f"git {args[0]} failed: {said[:2000]}", field="patch")
    return process.stdout


def git(repo: Path, *args: str, stdin: str | None = None, scratch: Path | None = None) -> str:
    """``git_bytes`` decoded."""
    out = git_bytes(repo, *args, stdin=stdin, scratch=scratch)
    try:
        return out.decode()
    except UnicodeDecodeError:  # a quoted name with octal escapes that are no UTF-8
        raise InvalidArgumentError("patch names a path that is not UTF-8", field="patch") from None


def ensure_repository(repo: Path) -> None:
    if not (repo / ".git").is_dir():
        raise FailedPreconditionError(
            f"{repo} is not a git repository; initialise it (git init) and commit the code "
            "agents may change",
            field="repository",
        )


def apply(repo: Path, patch: str, message: str, checked: PatchPlan, repo_rel: str) -> str:
    """Apply and commit; returns the commit sha. The caller's transaction undoes failures.
    Refused when the patch would now change other paths or modes than were checked."""
    if plan(patch, repo, repo_rel) != checked:
        raise FailedPreconditionError(
            "the repository changed since the patch was checked; retry", field="patch"
        )
    git(repo, "apply", "--check", "--whitespace=nowarn", "-", stdin=patch)
    git(repo, "apply", "--whitespace=nowarn", "--index", "-", stdin=patch)
    git(
        repo,
        "commit",
        "--no-verify",
        "-m",
        f"{message or 'agent patch'}\n\nArc-Patch-SHA256: {checked.sha256}",
    )
    return git(repo, "rev-parse", "HEAD").strip()
