"""Small POSIX helpers for durable, atomic file handling."""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

# the storage code imports these from here
from shared.fsutil import drop_cache, fsync_dir, start_writeback, writeback  # noqa: F401

# O_DIRECT wants file offsets, lengths and buffer addresses aligned to the device's
# logical block size; 4096 covers every common device (mmap buffers are page-aligned).
DIRECT_ALIGN = 4096


class UncachedReader:
    """Reads of one file; a big one is read straight from the disk (O_DIRECT, into one
    aligned buffer), so that a blob streamed once does not fill the page cache (see
    `writeback`). Small files (manifests, configs, read back often) use the page cache.

    No "cached? then buffered" probe: a RWF_NOWAIT read that misses starts readahead,
    which fills the cache anyway."""

    def __init__(self, path: Path, chunk: int, direct_from: int):
        self.fd = os.open(path, os.O_RDONLY)
        self.chunk = chunk
        self._direct: int | None = None
        self._buf: mmap.mmap | None = None
        if hasattr(os, "O_DIRECT") and os.fstat(self.fd).st_size >= direct_from:
            try:
                self._direct = os.open(path, os.O_RDONLY | os.O_DIRECT)
            except OSError:  # e.g. tmpfs: no direct I/O, the page cache it is
                self._direct = None

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def pread(self, length: int, offset: int) -> bytes:
        """Up to min(length, chunk) bytes at `offset` (b"" at the end); blocking."""
        length = min(length, self.chunk)
        if self._direct is not None:
            try:
                return self._pread_direct(length, offset)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                os.close(self._direct)  # alignment the device refuses: buffered from now on
                self._direct = None
        return os.pread(self.fd, length, offset)

    def _pread_direct(self, length: int, offset: int) -> bytes:
        start = offset - offset % DIRECT_ALIGN
        span = -(-(offset + length - start) // DIRECT_ALIGN) * DIRECT_ALIGN
        if self._buf is None or len(self._buf) < span:
            if self._buf is not None:
                self._buf.close()
            self._buf = mmap.mmap(-1, span)
        view = memoryview(self._buf)
        try:
            n = os.preadv(self._direct, [view[:span]], start)
            skip = offset - start
            return bytes(view[skip:min(n, skip + length)]) if n > skip else b""
        finally:
            view.release()

    def close(self) -> None:
        for fd in (self.fd, self._direct):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.fd, self._direct = -1, None
        if self._buf is not None:
            self._buf.close()
            self._buf = None


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
