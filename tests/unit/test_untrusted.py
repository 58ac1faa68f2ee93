"""Reads, writes and copies in folders another user may write (a sandboxed trainer's)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from arc_common.untrusted import (
    chown_tree_no_follow,
    copy_no_follow,
    read_no_follow,
    sha256_no_follow,
    write_no_follow,
)


def test_write_no_follow_replaces_a_planted_link_and_fifo(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    planted = tmp_path / "x.mac.tmp"
    planted.symlink_to(victim)
    write_no_follow(planted, "mine")
    assert victim.read_text() == "precious"  # not written through
    assert not planted.is_symlink() and planted.read_text() == "mine"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no reader: a blocking open would hang here
    write_no_follow(fifo, b"x")
    assert fifo.is_file() and fifo.read_bytes() == b"x"
    plain = tmp_path / "plain"
    write_no_follow(plain, "hello")
    write_no_follow(plain, "hi")
    assert plain.read_text() == "hi"
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError):
        write_no_follow(tmp_path / "dir", "x")


def test_reads_refuse_links_and_fifos_without_hanging(tmp_path: Path) -> None:
    secret = tmp_path / "tokens.json"
    secret.write_text("secret")
    link = tmp_path / "best.pt.json"
    link.symlink_to(secret)
    fifo = tmp_path / "best.pt.mac"
    os.mkfifo(fifo)  # nobody writes it: a blocking open would hang here
    for planted in (link, fifo):
        with pytest.raises(OSError):
            read_no_follow(planted)
        with pytest.raises(OSError):
            sha256_no_follow(planted)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11)
    with pytest.raises(OSError):
        read_no_follow(big, limit=10)
    assert read_no_follow(big, limit=11) == b"x" * 11
    assert sha256_no_follow(big) == hashlib.sha256(b"x" * 11).hexdigest()


def test_copy_replaces_a_planted_target_and_refuses_a_linked_source(tmp_path: Path) -> None:
    secret = tmp_path / "tokens.json"
    secret.write_text("secret")
    source = tmp_path / "best.pt"
    source.write_bytes(b"weights")
    target = tmp_path / "next" / "best.pt"
    target.parent.mkdir()
    target.symlink_to(secret)  # planted where the copy goes
    assert copy_no_follow(source, target) == hashlib.sha256(b"weights").hexdigest()
    assert not target.is_symlink() and target.read_bytes() == b"weights"
    assert secret.read_text() == "secret"
    linked = tmp_path / "linked.pt"
    linked.symlink_to(secret)
    with pytest.raises(OSError):
        copy_no_follow(linked, tmp_path / "next" / "copy.pt")
    assert not (tmp_path / "next" / "copy.pt").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_chown_tree_changes_links_not_their_targets_nor_hard_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("root's")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "own.pt").write_text("w")
    (tree / "link").symlink_to(outside)
    os.link(outside, tree / "hard")
    chown_tree_no_follow(tree, 65534, 65534)
    assert (tree / "sub" / "own.pt").stat().st_uid == 65534
    assert (tree / "sub").stat().st_uid == 65534
    assert os.lstat(tree / "link").st_uid == 65534
    assert outside.stat().st_uid == 0  # neither through the link nor the hard link


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_chown_tree_walks_a_tree_deeper_than_path_max(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    for _ in range(300):  # 300 x 21 characters: past PATH_MAX (4096)
        os.mkdir("d" * 20, dir_fd=fd)
        deeper = os.open("d" * 20, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.close(os.open("deep.pt", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    os.close(fd)
    chown_tree_no_follow(tmp_path / ("d" * 20), 65534, 65534, close=True)
    assert (tmp_path / ("d" * 20)).stat().st_uid == 65534
