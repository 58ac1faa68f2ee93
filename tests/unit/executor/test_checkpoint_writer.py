"""Checkpoints written on their own thread: in order, all on disk when the writer is left
(whatever ended the training), and a failed write stops the run at the next epoch."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.executor.protocol import checkpoint_is_intact
from services.executor.trainer.checkpoint_io import (
    CheckpointWriter,
    serialize_checkpoint,
    write_checkpoint,
)


def slow_write(path: Path, data: bytes, order: list[str]) -> None:
    time.sleep(0.2)
    serialized = serialize_checkpoint({"data": data})
    write_checkpoint(path, serialized.data, serialized.digest)
    order.append(path.name)


def test_writes_are_in_order_and_done_when_the_writer_is_left(tmp_path: Path) -> None:
    order: list[str] = []
    with pytest.raises(RuntimeError), CheckpointWriter() as writer:
        writer.submit(slow_write, tmp_path / "last.pt", b"a", order)
        writer.submit(slow_write, tmp_path / "best.pt", b"a", order)
        raise RuntimeError("the training stopped (pruned, cancelled, crashed)")
    assert order == ["last.pt", "best.pt"]
    assert checkpoint_is_intact(tmp_path / "last.pt") and checkpoint_is_intact(tmp_path / "best.pt")


def test_a_failed_write_raises_at_the_next_settle(tmp_path: Path) -> None:
    with CheckpointWriter() as writer:
        writer.submit(write_checkpoint, tmp_path / "missing" / "last.pt", b"x", "0" * 64)
        with pytest.raises(FileNotFoundError):
            writer.settle()
        writer.settle()  # reported once


def test_best_of_the_last_epoch_is_a_second_name_that_keeps_its_bytes(tmp_path: Path) -> None:
    first = serialize_checkpoint({"epoch": 1})
    write_checkpoint(tmp_path / "last.pt", first.data, first.digest)
    write_checkpoint(tmp_path / "best.pt", first.data, first.digest, same_as=tmp_path / "last.pt")
    assert (tmp_path / "best.pt").stat().st_ino == (tmp_path / "last.pt").stat().st_ino
    second = serialize_checkpoint({"epoch": 2})
    write_checkpoint(tmp_path / "last.pt", second.data, second.digest)  # the next epoch
    assert (tmp_path / "best.pt").read_bytes() == first.data
    assert (tmp_path / "last.pt").read_bytes() == second.data
    assert checkpoint_is_intact(tmp_path / "best.pt") and checkpoint_is_intact(tmp_path / "last.pt")


def test_best_is_written_whole_when_last_does_not_hold_its_bytes(tmp_path: Path) -> None:
    old = serialize_checkpoint({"epoch": 1})
    write_checkpoint(tmp_path / "last.pt", old.data, old.digest)
    new = serialize_checkpoint({"epoch": 2})  # its last.pt write failed: not linked to
    write_checkpoint(tmp_path / "best.pt", new.data, new.digest, same_as=tmp_path / "last.pt")
    assert (tmp_path / "best.pt").stat().st_ino != (tmp_path / "last.pt").stat().st_ino
    assert (tmp_path / "best.pt").read_bytes() == new.data
    assert checkpoint_is_intact(tmp_path / "best.pt")
