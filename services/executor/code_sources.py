"""Code sources: a registered repository's revision resolved to a commit (at submit), and
that commit exported read-only into a run's folder (at run start). The trainer imports
only from the export, never from the live working copy an agent may be patching."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from arc_common.errors import FailedPreconditionError, NotFoundError, ResourceExhaustedError
from arc_common.models import CodeSource
from arc_common.paths import make_read_only, resolve_in_root
from services.executor.tools.patches import ensure_repository, git, git_bytes

MAX_EXPORT_BYTES = 512 * 1024 * 1024


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


def export(home: Path, repositories: dict[str, str], source: CodeSource, dest: Path) -> None:
    """The tree of ``source.commit`` into ``dest`` (created), read-only for everyone: the
    run's trainer may read it and nobody may change it during the run. Blocking."""
    repo = repository_path(home, repositories, source.repository)
    try:
        archive_bytes = git_bytes(
            repo, "archive", "--format=tar", "--end-of-options", source.commit, timeout=300
        )
    except FailedPreconditionError as exc:
        raise NotFoundError(
            f"source.commit {source.commit[:12]} is not in repository {source.repository!r} on "
            f"this machine: {exc.message[:500]}",
            field="source.commit",
        ) from None
    if len(archive_bytes) > MAX_EXPORT_BYTES:
        raise ResourceExhaustedError(
            f"source {source.repository!r} at {source.commit[:12]} is larger than "
            f"{MAX_EXPORT_BYTES} bytes",
            field="source",
        )
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive_bytes)) as archive:
        # The "data" filter refuses links out of dest, devices and absolute names.
        archive.extractall(dest, filter="data")
    make_read_only(dest)
