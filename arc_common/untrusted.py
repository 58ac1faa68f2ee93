"""Files in folders another user may write (a sandboxed trainer's run folder): opened
without following a link planted at their name, without blocking on a FIFO, and only
when they are regular files. Every function raises OSError for anything else."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 1 << 20


def _regular(fd: int, path: Path) -> os.stat_result:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return info


def open_regular(path: Path) -> int:
    """A descriptor reading the regular file at ``path`` (the caller closes it)."""
    fd = os.open(path, _READ)
    _regular(fd, path)
    return fd


def read_no_follow(path: Path, *, limit: int = CHUNK) -> bytes:
    """The file's bytes; OSError when it holds more than ``limit``."""
    fd = open_regular(path)
    try:
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return data


def read_text_no_follow(path: Path, *, limit: int = CHUNK) -> str:
    """The file as UTF-8 text (ValueError when it is not)."""
    return read_no_follow(path, limit=limit).decode()


def sha256_no_follow(path: Path) -> str:
    digest = hashlib.sha256()
    fd = open_regular(path)
    try:
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_no_follow(path: Path, content: str | bytes) -> None:
    """Write ``path`` as a regular file: created, or truncated when it is one; a link, a
    FIFO or anything else planted at the name is replaced, never written through."""
    data = content.encode() if isinstance(content, str) else content
    try:
        fd = os.open(path, _WRITE | os.O_TRUNC, 0o644)
        _regular(fd, path)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EINVAL, errno.ENXIO, errno.EISDIR):
            raise
        os.unlink(path)  # a folder planted there stays: IsADirectoryError
        fd = os.open(path, _WRITE | os.O_EXCL, 0o644)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def save_png_no_follow(save: Callable[[BinaryIO], object], path: Path) -> None:
    """``save(buffer)`` (PIL's ``image.save(..., format="PNG")``, matplotlib's ``savefig``)
    written to ``path`` as ``write_no_follow`` writes."""
    buffer = io.BytesIO()
    save(buffer)
    write_no_follow(path, buffer.getvalue())


def copy_no_follow(source: Path, target: Path) -> str:
    """Copy the regular file ``source`` to a new file ``target`` (an existing name, a
    link included, is replaced, never written through); its SHA-256 as copied."""
    digest = hashlib.sha256()
    fd = open_regular(source)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        out = os.open(target, _WRITE | os.O_EXCL, 0o644)
        try:
            while chunk := os.read(fd, CHUNK):
                digest.update(chunk)
                _write_all(out, chunk)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    return digest.hexdigest()


def chown_tree_no_follow(top: Path, uid: int, gid: int, *, close: bool = False) -> None:
    """``top`` and everything under it to ``uid:gid``: links themselves (never their
    targets), nothing with a second hard link (it may be someone else's file). Walked by
    descriptor (``os.fwalk``), so a folder swapped for a link meanwhile leads nowhere and
    no path grows past PATH_MAX. ``close``: also take write access for group and others,
    and setuid/setgid bits, away from what is handed back."""
    strip = 0o7022 if close else 0
    for _folder, _dirs, files, dir_fd in os.fwalk(top):
        info = os.fstat(dir_fd)
        os.fchown(dir_fd, uid, gid)
        if info.st_mode & strip:
            os.fchmod(dir_fd, stat.S_IMODE(info.st_mode) & ~strip)
        for name in files:  # what fwalk does not descend into: files, links, FIFOs
            with contextlib.suppress(FileNotFoundError):
                _chown_entry(name, dir_fd, uid, gid, strip)


def _chown_entry(name: str, dir_fd: int, uid: int, gid: int, strip: int) -> None:
    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(info.st_mode):
        if not stat.S_ISDIR(info.st_mode):  # a link or FIFO: itself, never its target
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        return
    fd = os.open(name, _READ | os.O_NOCTTY, dir_fd=dir_fd)
    try:
        opened = os.fstat(fd)
        if stat.S_ISREG(opened.st_mode) and opened.st_nlink == 1:
            os.fchown(fd, uid, gid)
            if opened.st_mode & strip:
                os.fchmod(fd, stat.S_IMODE(opened.st_mode) & ~strip)
    finally:
        os.close(fd)
