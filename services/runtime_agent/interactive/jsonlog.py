"""An interactive container's log: what the agent reads from it, as docker json-file lines.

The shim writes the log of other containers; this is the same format (shim.py `_copy_logs`),
so that `logs` reads both alike.
"""

from __future__ import annotations

import os

import msgspec

from shared.runtime.jsonlog import rfc3339nano

_PARTIAL_LINE_MAX = 16 * 1024  # docker's json-file splits longer lines too
_NAMES = {1: "stdout", 2: "stderr"}


class JsonLog:
    def __init__(self, path: str | os.PathLike):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._bufs = {1: bytearray(), 2: bytearray()}

    def write(self, stream: int, data: bytes) -> None:
        buf = self._bufs[stream]
        buf += data
        self._emit(stream, take_lines(buf, final=False))

    def close(self) -> None:
        if self.fd < 0:
            return
        for stream, buf in self._bufs.items():
            self._emit(stream, take_lines(buf, final=True))
        os.close(self.fd)
        self.fd = -1

    def _emit(self, stream: int, lines: list[bytes]) -> None:
        if not lines or self.fd < 0:
            return
        ts = rfc3339nano()
        name = _NAMES[stream]
        os.write(self.fd, b"".join(
            msgspec.json.encode({"log": ln.decode(errors="replace"), "stream": name, "time": ts}) + b"\n"
            for ln in lines))


def take_lines(buf: bytearray, final: bool) -> list[bytes]:
    """Complete lines out of `buf` (kept with their newline); long or final rests too."""
    lines = []
    start = 0
    while (nl := buf.find(b"\n", start)) >= 0:
        lines.append(bytes(buf[start:nl + 1]))
        start = nl + 1
    rest = len(buf) - start
    if rest and (final or rest >= _PARTIAL_LINE_MAX):
        lines.append(bytes(buf[start:]))
        start = len(buf)
    del buf[:start]
    return lines
