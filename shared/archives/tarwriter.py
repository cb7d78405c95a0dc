"""A tar written member by member, a member's size learnt only once its bytes are written.

`docker save` puts uncompressed layers in the archive; their size is known only after
decompressing, and a layer is never held in memory: the header is written with size
0, the bytes streamed after it, then the header is rewritten in place (the output
must be seekable; `save` to a pipe goes through a temporary file). Written to a file,
the bytes are written back to disk as they come (`shared.fsutil.WriteBehind`), so that
the caller's fsync is short and a big archive does not fill the page cache.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from typing import BinaryIO

from shared.fsutil import WriteBehind

BLOCK = 512


class TarWriter:
    def __init__(self, out: BinaryIO):
        self.out = out
        self._header_at: int | None = None
        self._name = ""
        self._size = 0
        self._behind = WriteBehind(fd, out.tell()) if (fd := _regular_fd(out)) is not None else None

    def _header(self, name: str, size: int) -> bytes:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = size, 0o644, 0
        return ti.tobuf(format=tarfile.USTAR_FORMAT)

    def add_bytes(self, name: str, data: bytes) -> None:
        self.begin(name)
        self.write(data)
        self.end()

    def begin(self, name: str) -> None:
        if len(name) > 100:
            raise ValueError(f"archive member name too long: {name}")
        self._header_at, self._name, self._size = self.out.tell(), name, 0
        self.out.write(self._header(name, 0))

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self._size += len(data)
        if self._behind is not None:
            self._behind.wrote_to(self._header_at + BLOCK + self._size)

    def end(self) -> int:
        pad = (-self._size) % BLOCK
        if pad:
            self.out.write(b"\0" * pad)
        here = self.out.tell()
        self.out.seek(self._header_at)
        self.out.write(self._header(self._name, self._size))
        self.out.seek(here)
        size, self._header_at = self._size, None
        return size

    def close(self) -> None:
        self.out.write(b"\0" * (2 * BLOCK))
        self.out.flush()


def _regular_fd(out: BinaryIO) -> int | None:
    try:
        fd = out.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
