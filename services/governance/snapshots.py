"""Byte-exact snapshots of workspace paths, and their restoration.

A snapshot of a path records what was there: nothing, a file (copied, with its SHA-256 and
mode) or a directory tree (every file and directory in it). Restoring puts exactly that
back: modified files get their bytes back, files created since are removed, deleted files
return. Restoring is idempotent, so a rollback interrupted by a crash can simply run again.
Symlinks are recorded as links and never followed, so a snapshot cannot read or write
outside the workspace.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arc_common.errors import ResourceExhaustedError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RestoreCounts:
    restored: int
    removed: int


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def take_snapshot(
    workspace: Path, relative_paths: list[str], snapshot_dir: Path, *, max_bytes: int
) -> None:
    """Copy what ``relative_paths`` hold now into ``snapshot_dir`` (with a manifest)."""
    snapshot_dir.mkdir(parents=True, exist_ok=False)
    entries: list[dict[str, Any]] = []
    total = 0
    blob = 0

    def add_file(rel: str, source: Path) -> None:
        nonlocal total, blob
        size = source.stat().st_size
        total += size
        if total > max_bytes:
            raise ResourceExhaustedError(
                f"paths to snapshot exceed {max_bytes} bytes; narrow the transaction's paths",
                field="paths",
            )
        blob += 1
        name = f"blob-{blob:06d}"
        with source.open("rb") as src, (snapshot_dir / name).open("wb") as dst:
            shutil.copyfileobj(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
        entries.append(
            {
                "path": rel,
                "kind": "file",
                "blob": name,
                "sha256": _sha256(snapshot_dir / name),
                "mode": source.stat().st_mode & 0o7777,
            }
        )

    for rel in relative_paths:
        target = workspace / rel
        if target.is_symlink():
            entries.append({"path": rel, "kind": "symlink", "target": os.readlink(target)})
        elif target.is_file():
            add_file(rel, target)
        elif target.is_dir():
            entries.append({"path": rel, "kind": "dir", "mode": target.stat().st_mode & 0o7777})
            for root, dirs, files in os.walk(target, followlinks=False):
                root_path = Path(root)
                for name in sorted(dirs):
                    sub = root_path / name
                    sub_rel = str(sub.relative_to(workspace))
                    if sub.is_symlink():
                        entries.append(
                            {"path": sub_rel, "kind": "symlink", "target": os.readlink(sub)}
                        )
                    else:
                        entries.append(
                            {"path": sub_rel, "kind": "dir", "mode": sub.stat().st_mode & 0o7777}
                        )
                for name in sorted(files):
                    sub = root_path / name
                    sub_rel = str(sub.relative_to(workspace))
                    if sub.is_symlink():
                        entries.append(
                            {"path": sub_rel, "kind": "symlink", "target": os.readlink(sub)}
                        )
                    else:
                        add_file(sub_rel, sub)
        else:
            entries.append({"path": rel, "kind": "absent"})
    manifest = {"roots": relative_paths, "entries": entries}
    tmp = snapshot_dir / (MANIFEST + ".tmp")
    with tmp.open("w") as handle:
        json.dump(manifest, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(snapshot_dir / MANIFEST)
    _fsync_dir(snapshot_dir)


def has_manifest(snapshot_dir: Path) -> bool:
    return (snapshot_dir / MANIFEST).exists()


def _remove(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        path.unlink()
        return 1
    if path.is_dir():
        count = sum(1 for p in path.rglob("*") if p.is_file() or p.is_symlink())
        shutil.rmtree(path)
        return count
    return 0


def restore_snapshot(workspace: Path, snapshot_dir: Path) -> RestoreCounts:
    """Make every snapshotted root exactly as it was (idempotent)."""
    manifest = json.loads((snapshot_dir / MANIFEST).read_text())
    entries: list[dict[str, Any]] = manifest["entries"]
    recorded = {e["path"] for e in entries}
    removed = 0
    # 1. Remove everything under the roots that the snapshot does not know.
    for root in manifest["roots"]:
        target = workspace / root
        if not (target.exists() or target.is_symlink()):
            continue
        if target.is_dir() and not target.is_symlink():
            for path in sorted(target.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                rel = str(path.relative_to(workspace))
                if rel not in recorded:
                    removed += _remove(path)
        if (
            root not in recorded
            or next(e for e in entries if e["path"] == root)["kind"] == "absent"
        ):
            removed += _remove(target)
    # 2. Put back every recorded entry, byte for byte.
    restored = 0
    for entry in entries:
        path = workspace / entry["path"]
        kind = entry["kind"]
        if kind == "absent":
            continue
        if kind == "dir":
            if path.is_symlink() or path.is_file():
                path.unlink()
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, entry["mode"])
        elif kind == "symlink":
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(entry["target"], path)
        else:
            if path.is_symlink():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
            if path.is_file() and _sha256(path) == entry["sha256"]:
                os.chmod(path, entry["mode"])
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.arc-restore")
            shutil.copyfile(snapshot_dir / entry["blob"], tmp)
            os.chmod(tmp, entry["mode"])
            with tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
            tmp.replace(path)
            restored += 1
    return RestoreCounts(restored=restored, removed=removed)
