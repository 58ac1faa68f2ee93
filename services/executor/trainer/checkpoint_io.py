"""Checkpoints on disk: serialized once, hashed in memory, written atomically (temp file,
fsync, rename, checksum last), on a writer thread while training goes on; and loaded only
when their bytes hash to the digest the executor registered."""

from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from arc_common.models import CheckpointKind
from services.executor.protocol import CHECKSUM_SUFFIX

CHECKPOINT_FORMAT = "arc-checkpoint-v1"


@dataclass
class Serialized:
    """A checkpoint's bytes; their SHA-256 is computed in memory (no second read) the
    first time it is asked for, by whoever writes them first."""

    data: bytes

    @functools.cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def host_copy(value: Any) -> Any:
    """``value`` with every tensor copied to host memory and every dict, list and tuple
    rebuilt: nothing in it changes when the training goes on."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: host_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(host_copy(item) for item in value)
    return value


def serialize_checkpoint(payload: dict[str, Any]) -> Serialized:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return Serialized(buffer.getvalue())


def load_verified(path: Path, sha256: str, *, map_location: Any = "cpu") -> Any:
    """The checkpoint at ``path`` when its bytes hash to ``sha256``, else None. Tensors and
    plain data only (``weights_only``): loading a checkpoint never runs code."""
    if not sha256:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        return None
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def _recorded_digest(path: Path) -> str:
    try:
        return path.with_name(path.name + CHECKSUM_SUFFIX).read_text().split()[0]
    except (OSError, IndexError):
        return ""


def write_checkpoint(path: Path, data: bytes, digest: str, *, same_as: Path | None = None) -> None:
    """Atomic: temp file, fsync, rename; the checksum file is renamed last.

    ``same_as``: a checkpoint just written with these very bytes (best.pt of the epoch
    whose last.pt it is). ``path`` becomes a second name of that file (a hard link: no
    second write and fsync of a file that holds the optimizer state too). Checkpoints are
    only ever replaced by rename, never written in place, so when last.pt is replaced next
    epoch best.pt keeps these bytes. Where links are refused the bytes are written."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # left by a kill in the middle of a write
    linked = False
    if same_as is not None and _recorded_digest(same_as) == digest:  # its write succeeded
        try:
            os.link(same_as, tmp)
            linked = True
        except OSError:
            pass
    if not linked:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    sidecar_tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    sidecar_tmp.write_text(f"{digest}  {path.name}\n")
    tmp.replace(path)
    sidecar_tmp.replace(sidecar)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> str:
    serialized = serialize_checkpoint(payload)
    write_checkpoint(path, serialized.data, serialized.digest)
    return serialized.digest


class CheckpointWriter:
    """Checkpoints go to disk (serialize, hash, write, fsync, checksum) on a thread of their
    own while the training goes on. An epoch's writes wait for the
    previous epoch's first, so at most one epoch is in flight: a failed write stops the run
    an epoch later at the latest, and at most two copies are held."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending: list[Future[Any]] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._pending.append(self._pool.submit(fn, *args))

    def settle(self) -> None:
        """Wait for every write submitted so far; a failed one raises here."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self._pool.shutdown(wait=True)  # on any exit: what was submitted reaches the disk


# What only resuming needs: last.pt keeps it, a best.pt of an earlier epoch does not.
RESUME_ONLY = ("optimizer_state_dict", "scheduler_state_dict")


def slim_best(checkpoint_dir: Path, write: Callable[..., Path]) -> None:
    """best.pt of an earlier epoch than last.pt, written again without the optimizer's
    state (about two thirds of an Adam checkpoint) and reported with its new digest."""
    path = checkpoint_dir / "best.pt"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not any(payload.get(key) for key in RESUME_ONLY):
        return
    slim = {key: value for key, value in payload.items() if key not in RESUME_ONLY}
    write(
        CheckpointKind.BEST, int(slim["epoch"]), dict(slim["metrics"]), serialize_checkpoint(slim)
    )
