"""Only checkpoints the executor registered load, and loading never runs code."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest

from arc_common.errors import PermissionDeniedError
from services.executor.protocol import CHECKSUM_SUFFIX
from services.executor.registry import CheckpointRegistry, mac_path
from services.executor.trainer.checkpoint_io import load_verified, save_checkpoint


class Payload:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, int]]:
        return (os.open, (str(self.marker), os.O_CREAT | os.O_WRONLY))


def checkpoint(home: Path, rel: str = "runs/j/checkpoints/best.pt") -> tuple[Path, str]:
    import torch

    path = home / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = save_checkpoint(path, {"model_state_dict": {"w": torch.zeros(2)}, "epoch": 1})
    return path, digest


def test_registered_checkpoint_verifies(tmp_path: Path) -> None:
    registry = CheckpointRegistry(tmp_path)
    path, digest = checkpoint(tmp_path)
    assert registry.register(path, digest)
    assert registry.verify(path, field="checkpoint_path") == digest
    assert load_verified(path, digest)["epoch"] == 1


def test_a_checksum_file_is_not_a_registration(tmp_path: Path) -> None:
    registry = CheckpointRegistry(tmp_path)
    path, _ = checkpoint(tmp_path)
    assert path.with_name(path.name + CHECKSUM_SUFFIX).exists()
    with pytest.raises(PermissionDeniedError) as info:
        registry.verify(path, field="checkpoint_path")
    assert info.value.field == "checkpoint_path"


def test_changed_bytes_moved_files_and_forged_macs_are_refused(tmp_path: Path) -> None:
    registry = CheckpointRegistry(tmp_path)
    path, digest = checkpoint(tmp_path)
    registry.register(path, digest)
    moved = tmp_path / "runs" / "other" / "best.pt"  # the MAC binds the path too
    moved.parent.mkdir(parents=True)
    moved.write_bytes(path.read_bytes())
    mac_path(moved).write_bytes(mac_path(path).read_bytes())
    with pytest.raises(PermissionDeniedError):
        registry.verify(moved, field="checkpoint_path")
    mac_path(moved).write_text(hashlib.sha256(moved.read_bytes()).hexdigest())
    with pytest.raises(PermissionDeniedError):
        registry.verify(moved, field="checkpoint_path")
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(PermissionDeniedError):
        registry.verify(path, field="checkpoint_path")


def test_nothing_outside_runs_is_registered_or_accepted(tmp_path: Path) -> None:
    registry = CheckpointRegistry(tmp_path)
    path, digest = checkpoint(tmp_path, "code/models/x.pt")
    assert not registry.register(path, digest)
    assert not mac_path(path).exists()
    with pytest.raises(PermissionDeniedError):
        registry.verify(path, field="checkpoint_path")


def test_a_pickle_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Payload(marker)))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported|unpickl"):
        load_verified(path, digest)
    assert not marker.exists()
    assert load_verified(path, "0" * 64) is None  # bytes not the verified ones: not read


def test_a_job_folder_has_one_owner_and_a_forged_record_counts_for_none(tmp_path: Path) -> None:
    registry = CheckpointRegistry(tmp_path)
    path, _ = checkpoint(tmp_path, "runs/j/attempt-1/checkpoints/best.pt")
    assert registry.owner(path) == ""  # nobody claimed it: the operator's
    registry.claim(tmp_path / "runs/j/attempt-1/checkpoints", "architect")
    assert registry.owner(path) == "architect"
    assert registry.owner(tmp_path / "runs/j/attempt-2/logs") == "architect"
    registry.claim(tmp_path / "runs/j/attempt-2/checkpoints", "critic")  # the first stands
    assert registry.owner(path) == "architect"
    assert registry.owner(tmp_path / "runs/other/x.pt") == ""
    assert registry.owner(tmp_path / "datasets/fundus") == ""

    # A record written without the key (by hand, or copied from another job) is no owner.
    (tmp_path / "runs/j/.owner").write_text("critic\n" + "0" * 64 + "\n")
    assert registry.owner(path) == ""
    registry.claim(tmp_path / "runs/k/checkpoints", "critic")
    (tmp_path / "runs/j/.owner").write_bytes((tmp_path / "runs/k/.owner").read_bytes())
    assert registry.owner(path) == ""
