"""Small POSIX helpers for durable, atomic file handling."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk now, without waiting.

    Ingest data is written back while the upload is still streaming, so the one
    fsync at commit finds little left to flush (Linux only; elsewhere a no-op).
    """
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, link or unlink in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: Path, root: Path) -> None:
    """mkdir -p that fsyncs the parent of every directory it creates (up to `root`)."""
    if path.is_dir():
        return
    missing = []
    p = path
    while not p.is_dir() and p != root:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        fsync_dir(d.parent)


def write_all(fd: int, bufs: list[bytes]) -> int:
    """writev until every buffer is written (writev may stop short)."""
    total = sum(len(b) for b in bufs)
    done = 0
    views = [memoryview(b) for b in bufs]
    while views:
        n = os.writev(fd, views[:512])  # IOV_MAX is 1024 on Linux
        done += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]
    assert done == total
    return total


def write_file_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` with `data`: write a temp file beside it, (fsync,) rename, (fsync dir)."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, [data])
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def unlink_missing_ok(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def is_no_space(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)
