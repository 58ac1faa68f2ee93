"""sync_datasets: DVC push and pull of datasets under ``datasets/<id>`` in the workspace.

The workspace is a DVC repository without git (``dvc init --no-scm``); the remote is a
local directory by default, so it works on one machine with no network. Every push keeps
the dataset's ``.dvc`` file under ``datasets/.revisions/<id>/<md5>.dvc``, so a revision
named in a spec can be trained on later: ``materialize`` builds it once, read-only, in
``datasets/.revisions/<id>/<md5>/`` from DVC's cache, and never touches the working copy
``datasets/<id>`` (which a user may be editing, and other jobs may be reading).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from arc_common.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from arc_common.paths import make_read_only

REMOTE_NAME = "arc"


@dataclass(frozen=True)
class Transfer:
    dataset_id: str
    files: int
    bytes: int
    revision: str


def _env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_NO_UPDATER": "1"}


def dvc(workspace: Path, *args: str) -> str:
    process = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=workspace,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
        check=False,
    )
    if process.returncode != 0:
        raise FailedPreconditionError(
            f"dvc {args[0]} failed: {(process.stderr or process.stdout).strip()[-2000:]}"
        )
    return process.stdout + process.stderr


def ensure_repo(workspace: Path, remote: str) -> None:
    if not (workspace / ".dvc").is_dir():
        dvc(workspace, "init", "--no-scm", "-q")
        dvc(workspace, "config", "core.autostage", "false")
    dvc(workspace, "remote", "add", "-d", "-f", REMOTE_NAME, remote)
    # The cache and a local remote hold every revision, sealed test images too: for the
    # executor's user alone (a sandboxed trainer reads the copies it is given).
    (workspace / ".dvc").chmod(0o700)
    local = Path(remote)
    if "://" not in remote and local.is_absolute() and local.is_relative_to(workspace):
        local.mkdir(parents=True, exist_ok=True)
        local.chmod(0o700)


def _count(output: str, verb: str) -> int:
    match = re.search(rf"(\d+) files? {verb}", output)
    return int(match.group(1)) if match else 0


def _folder_stats(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def revision_of(dvc_file: Path) -> str:
    data = yaml.safe_load(dvc_file.read_text())
    return str(data["outs"][0]["md5"])


def push(workspace: Path, dataset_id: str) -> Transfer:
    folder = workspace / "datasets" / dataset_id
    if not folder.is_dir():
        raise NotFoundError(f"no dataset folder datasets/{dataset_id}", field="dataset_ids")
    dvc(workspace, "add", "-q", f"datasets/{dataset_id}")
    dvc_file = workspace / "datasets" / f"{dataset_id}.dvc"
    output = dvc(workspace, "push", "-r", REMOTE_NAME, str(dvc_file.relative_to(workspace)))
    revision = revision_of(dvc_file)
    keep = workspace / "datasets" / ".revisions" / dataset_id / f"{revision}.dvc"
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dvc_file, keep)
    _, size = _folder_stats(folder)
    pushed = _count(output, "pushed")
    return Transfer(dataset_id, pushed, size if pushed else 0, revision)


def pull(workspace: Path, dataset_id: str, revision: str = "") -> Transfer:
    dvc_file = workspace / "datasets" / f"{dataset_id}.dvc"
    if revision:
        kept = workspace / "datasets" / ".revisions" / dataset_id / f"{revision}.dvc"
        if not kept.exists():
            raise NotFoundError(
                f"dataset {dataset_id} has no pushed revision {revision}", field="dvc_revision"
            )
        shutil.copyfile(kept, dvc_file)
    if not dvc_file.exists():
        raise NotFoundError(
            f"dataset {dataset_id} was never pushed (no datasets/{dataset_id}.dvc)",
            field="dataset_ids",
        )
    output = dvc(
        workspace, "pull", "-r", REMOTE_NAME, "--force", str(dvc_file.relative_to(workspace))
    )
    _, size = _folder_stats(workspace / "datasets" / dataset_id)
    fetched = _count(output, "fetched") or _count(output, "added") or _count(output, "modified")
    return Transfer(dataset_id, fetched, size if fetched else 0, revision_of(dvc_file))


def _cached(workspace: Path, md5: str) -> Path:
    return workspace / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def materialize(workspace: Path, dataset_id: str, revision: str) -> Path:
    """The dataset at a pushed revision, as a read-only folder of its own (made once,
    content-addressed by the revision; fetched from the remote when the cache lacks it).
    Blocking."""
    kept = workspace / "datasets" / ".revisions" / dataset_id / f"{revision}.dvc"
    if "/" in revision or not kept.is_file():
        raise NotFoundError(
            f"dataset {dataset_id} has no pushed revision {revision}",
            field="dataset.dvc_revision",
        )
    dest = kept.with_suffix("")
    if dest.is_dir():
        return dest
    md5 = revision_of(kept)
    if not _cached(workspace, md5).is_file():
        dvc(workspace, "fetch", "-r", REMOTE_NAME, str(kept.relative_to(workspace)))
    entries = json.loads(_cached(workspace, md5).read_text())
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for entry in entries:
        relative = Path(entry["relpath"])
        if relative.is_absolute() or ".." in relative.parts:
            raise InvalidArgumentError(
                f"revision {revision} names {relative}: refused", field="dataset.dvc_revision"
            )
        target = tmp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        source = _cached(workspace, entry["md5"])
        try:
            os.link(source, target)  # the cache's bytes, no copy
        except OSError:
            shutil.copyfile(source, target)
    make_read_only(tmp)
    try:
        tmp.rename(dest)
    except OSError:  # made meanwhile by another run: the same bytes
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
