"""Code sources: a registered repository's revision resolved to a commit (at submit), and
that commit exported read-only into a run's folder (at run start). The trainer imports
only from the export, never from the live working copy an agent may be patching."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

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
    partial = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    args = [*GIT, "archive", "--format=tar", "--end-of-options", source.commit]
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
        with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
            archive.extractall(partial, filter=_files_only)
    except tarfile.TarError as exc:
        shown = f"source {source.repository!r} at {source.commit[:12]}"
        if killed.is_set():
            raise DeadlineExceededError(
                f"{shown} took longer than {EXPORT_SECONDS} s to export", field="source"
            ) from None
        # Not FAILED_PRECONDITION: the scheduler would take it for a stale lease.
        raise AbortedError(f"{shown} could not be exported: {exc}", field="source") from None
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
    make_read_only(partial)
    partial.rename(dest)
