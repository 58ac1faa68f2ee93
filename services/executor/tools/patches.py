"""apply_code_patch: a unified diff from an agent, applied to a registered git repository.

Checked before git sees it: no absolute paths, no ``..``, nothing under ``.git/``, no
symlinks created or written through (the shape of CVE-2023-23946), no binary patches.
Then ``git apply --check``, ``git apply`` and a commit recording the patch hash. git runs
without a shell, with hooks and external config neutralised.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from arc_common.errors import FailedPreconditionError, InvalidArgumentError

_HEADER = re.compile(r"^(?:---|\+\+\+) (?P<path>\S+)")
_GIT_DIFF = re.compile(r"^diff --git (?P<a>\S+) (?P<b>\S+)")
_RENAME = re.compile(r"^(?:rename|copy) (?:from|to) (?P<path>.+)$")
_MODE = re.compile(r"^(?:new file mode|new mode|old mode|deleted file mode) (?P<mode>\d+)")
MAX_PATCH_BYTES = 1024 * 1024


@dataclass(frozen=True)
class PatchPlan:
    files: list[str]
    added: int
    removed: int
    sha256: str


def _strip(path: str) -> str:
    return path[2:] if path.startswith(("a/", "b/")) else path


def _check_path(path: str, repo: Path) -> str:
    if path == "/dev/null":
        return ""
    if "\x00" in path or "\\" in path:
        raise InvalidArgumentError(f"patch path {path!r} has forbidden characters", field="patch")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise InvalidArgumentError(f"patch path {path!r} is absolute", field="patch")
    parts = PurePosixPath(path).parts
    if ".." in parts:
        raise InvalidArgumentError(f"patch path {path!r} climbs out with '..'", field="patch")
    if any(part.lower() == ".git" for part in parts):
        raise InvalidArgumentError(f"patch path {path!r} touches .git/", field="patch")
    # No component may be a symlink already: writing through it would leave the repository.
    current = repo
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise InvalidArgumentError(
                f"patch path {path!r} goes through the symlink {current.relative_to(repo)}",
                field="patch",
            )
    return path


def plan(patch: str, repo: Path) -> PatchPlan:
    if not patch.strip():
        raise InvalidArgumentError("patch is empty", field="patch")
    if len(patch.encode()) > MAX_PATCH_BYTES:
        raise InvalidArgumentError(f"patch is larger than {MAX_PATCH_BYTES} bytes", field="patch")
    files: list[str] = []
    added = removed = 0
    for line in patch.splitlines():
        if line.startswith("GIT binary patch") or line.startswith("Binary files"):
            raise InvalidArgumentError("binary patches are not accepted", field="patch")
        mode = _MODE.match(line)
        if mode and mode.group("mode") == "120000":
            raise InvalidArgumentError("patches may not create symlinks", field="patch")
        git = _GIT_DIFF.match(line)
        if git:
            for side in ("a", "b"):
                _check_path(_strip(git.group(side)), repo)
            continue
        rename = _RENAME.match(line)
        if rename:
            files.append(_check_path(rename.group("path").strip(), repo))
            continue
        header = _HEADER.match(line)
        if header:
            checked = _check_path(_strip(header.group("path")), repo)
            if checked:
                files.append(checked)
            continue
        if line.startswith("+"):
            added += 1
        elif line.startswith("-"):
            removed += 1
    if not files:
        raise InvalidArgumentError("patch names no file (expected a unified diff)", field="patch")
    return PatchPlan(
        files=list(dict.fromkeys(files)),
        added=added,
        removed=removed,
        sha256=hashlib.sha256(patch.encode()).hexdigest(),
    )


def _git_env() -> dict[str, str]:
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


def git(repo: Path, *args: str, stdin: str | None = None) -> str:
    process = subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", "-c", "core.symlinks=false", *args],
        cwd=repo,
        input=stdin,
        capture_output=True,
        text=True,
        env=_git_env(),
        timeout=120,
        check=False,
    )
    if process.returncode != 0:
        raise FailedPreconditionError(
            f"git {args[0]} failed: {(process.stderr or process.stdout).strip()[:2000]}",
            field="patch",
        )
    return process.stdout


def ensure_repository(repo: Path) -> None:
    if not (repo / ".git").is_dir():
        raise FailedPreconditionError(
            f"{repo} is not a git repository; initialise it (git init) and commit the code "
            "agents may change",
            field="repository",
        )


def apply(repo: Path, patch: str, message: str, digest: str) -> str:
    """Apply and commit; returns the commit sha. The caller's transaction undoes failures."""
    git(repo, "apply", "--check", "--whitespace=nowarn", "-", stdin=patch)
    git(repo, "apply", "--whitespace=nowarn", "--index", "-", stdin=patch)
    git(
        repo,
        "commit",
        "--no-verify",
        "-m",
        f"{message or 'agent patch'}\n\nArc-Patch-SHA256: {digest}",
    )
    return git(repo, "rev-parse", "HEAD").strip()
