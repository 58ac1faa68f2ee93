"""Writes into folders another user may write (a sandboxed trainer's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from arc_common.paths import write_no_follow


def test_write_no_follow_refuses_a_planted_link_and_a_fifo(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    planted = tmp_path / "x.mac.tmp"
    planted.symlink_to(victim)
    with pytest.raises(OSError):
        write_no_follow(planted, "overwritten")
    assert victim.read_text() == "precious"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError):  # no reader: refused at once, not a hang
        write_no_follow(fifo, "x")
    plain = tmp_path / "plain"
    write_no_follow(plain, "hello")
    write_no_follow(plain, "hi")
    assert plain.read_text() == "hi"
