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


def chown_tree_no_follow(top: Path, uid: int, gid: int) -> None:
    """``top`` and everything under it to ``uid:gid``, links themselves (never their
    targets), and nothing with a second hard link (it might be a file of someone else's)."""
    for folder, dirs, files in os.walk(top):  # os.walk does not descend into links
        os.chown(folder, uid, gid, follow_symlinks=False)
        for name in [*dirs, *files]:
            path = os.path.join(folder, name)
            with contextlib.suppress(FileNotFoundError):
                info = os.lstat(path)
                if stat.S_ISDIR(info.st_mode) or info.st_nlink == 1:
                    os.chown(path, uid, gid, follow_symlinks=False)
