"""Code sources: a registered repository's revision resolved to a commit (at submit), and
that commit exported read-only into a run's folder (at run start). The trainer imports
only from the export, never from the live working copy an agent may be patching."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import threading
import uuid
from pathlib import Path
from typing import IO, Any

from arc_common.errors import (
    AbortedError,
    DeadlineExceededError,
    FailedPreconditionError,
    NotFoundError,
    ResourceExhaustedError,
)
from arc_common.models import CodeSource
from arc_common.paths import make_read_only, resolve_in_root
from services.executor.tools.patches import GIT, ensure_repository, git, git_bytes, git_env

MAX_EXPORT_BYTES = 512 * 1024 * 1024
MAX_EXPORT_FILES = 100_000
EXPORT_SECONDS = 300


def repository_path(home: Path, repositories: dict[str, str], name: str) -> Path:
    if name not in repositories:
        known = ", ".join(sorted(repositories)) or "none"
        raise NotFoundError(
            f"source.repository {name!r} is not registered (registered: {known})",
            field="source.repository",
        )
    repo = resolve_in_root(home, repositories[name], field="source.repository")
    ensure_repository(repo)
    return repo


def _module_paths(entry: str) -> tuple[str, str]:
    module = entry.partition(":")[0].replace(".", "/")
    return f"{module}.py", f"{module}/__init__.py"


def _exists(repo: Path, commit: str, path: str) -> bool:
    try:
        git(repo, "cat-file", "-e", f"{commit}:{path}")
    except FailedPreconditionError:
        return False
    return True


def resolve(home: Path, repositories: dict[str, str], source: CodeSource) -> CodeSource:
    """``source`` with its commit and tree set; NOT_FOUND naming the field that does not
    resolve (the repository, the revision, or an entrypoint's module). Blocking."""
    repo = repository_path(home, repositories, source.repository)
    revision = source.revision or "HEAD"
    try:
        commit = git(repo, "rev-parse", "--verify", "--end-of-options", f"{revision}^{{commit}}")
    except FailedPreconditionError:
        raise NotFoundError(
            f"source.revision {revision!r} is no commit of repository {source.repository!r}",
            field="source.revision",
        ) from None
    commit = commit.strip()
    tree = git(repo, "rev-parse", f"{commit}^{{tree}}").strip()
    for name, entry in source.entries().items():
        if not any(_exists(repo, commit, path) for path in _module_paths(entry)):
            file, package = _module_paths(entry)
            raise NotFoundError(
                f"source.{name} {entry!r}: commit {commit[:12]} of {source.repository!r} has "
                f"neither {file} nor {package}",
                field=f"source.{name}",
            )
    return source.model_copy(update={"revision": revision, "commit": commit, "tree": tree})


def _tree_size(repo: Path, source: CodeSource) -> int:
    """The bytes of the commit's files, from git's tree (nothing exported yet)."""
    try:
        listing = git_bytes(repo, "ls-tree", "-r", "-l", "-z", "--full-tree", source.commit)
    except FailedPreconditionError as exc:
        raise NotFoundError(
            f"source.commit {source.commit[:12]} is not in repository {source.repository!r} on "
            f"this machine: {exc.message[:500]}",
            field="source.commit",
        ) from None
    entries = [entry for entry in listing.split(b"\0") if entry]
    if len(entries) > MAX_EXPORT_FILES:
        raise _too_large(source, f"{MAX_EXPORT_FILES} files")
    total = 0
    for entry in entries:
        size = entry.split(b"\t", 1)[0].split()[-1]
        total += int(size) if size.isdigit() else 0  # "-" for a submodule
    return total


def _too_large(source: CodeSource, limit: str) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        f"source {source.repository!r} at {source.commit[:12]} has more than {limit}",
        field="source",
    )


def _files_only(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
    """Regular files and folders, checked by the "data" filter; links, devices and FIFOs
    are left out (the trainer imports Python files)."""
    if not (member.isreg() or member.isdir()):
        return None
    return tarfile.data_filter(member, path)


def export(home: Path, repositories: dict[str, str], source: CodeSource, dest: Path) -> None:
    """The tree of ``source.commit`` into ``dest`` (created), read-only for everyone: the
    run's trainer may read it and nobody may change it during the run. Its size is known
    before anything is written; git's archive streams into place. Blocking."""
    repo = repository_path(home, repositories, source.repository)
    if _tree_size(repo, source) > MAX_EXPORT_BYTES:
        raise _too_large(source, f"{MAX_EXPORT_BYTES} bytes")
    # Made beside, then renamed: a cut-short export is never taken for a whole one.
    partial = dest.with_name(f".{dest.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir(parents=True)
    shown = f"source {source.repository!r} at {source.commit[:12]}"
    try:
        code, killed = _extract(repo, source.commit, partial)
        if killed:
            raise DeadlineExceededError(
                f"{shown} took longer than {EXPORT_SECONDS} s to export", field="source"
            )
        if code != 0:
            raise AbortedError(f"{shown} could not be exported: git exited {code}", field="source")
        make_read_only(partial)
        partial.rename(dest)
    except (OSError, tarfile.TarError) as exc:
        # Not FAILED_PRECONDITION: the scheduler would take it for a stale lease.
        raise AbortedError(f"{shown} could not be exported: {exc}", field="source") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)


class _Capped(io.RawIOBase):
    """git's archive, refused past MAX_EXPORT_BYTES (attributes such as ``ident`` can make
    it larger than the tree that was sized)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream, self._read = stream, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        self._read += len(data)
        if self._read > MAX_EXPORT_BYTES + (1 << 20):
            raise tarfile.ReadError(f"the archive is larger than {MAX_EXPORT_BYTES} bytes")
        buffer[: len(data)] = data
        return len(data)


def _extract(repo: Path, commit: str, into: Path) -> tuple[int, bool]:
    """git archive of ``commit`` unpacked into ``into``; git's exit code, and whether the
    watchdog killed it."""
    args = [*GIT, "archive", "--format=tar", "--end-of-options", commit]
    process = subprocess.Popen(
        args, cwd=repo, env=git_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        process.kill()

    watchdog = threading.Timer(EXPORT_SECONDS, kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        with tarfile.open(fileobj=_Capped(process.stdout), mode="r|") as archive:
            archive.extractall(into, filter=_files_only)
        code = process.wait()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
    return code, killed.is_set()
