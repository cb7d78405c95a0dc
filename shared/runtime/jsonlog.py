"""docker's json-file log format: one `{"log", "stream", "time"}` object per line."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgspec


class LogEntry(msgspec.Struct, frozen=True):
    log: str
    stream: str
    time: str


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LogEntry)


def rfc3339nano(ns: int | None = None) -> str:
    """UTC RFC 3339 with nanoseconds, trailing zeros trimmed, like Go's RFC3339Nano."""
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    frac_s = f"{frac:09d}".rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + (f".{frac_s}" if frac_s else "") + "Z"


def encode(stream: str, data: bytes, ts: str | None = None) -> bytes:
    entry = LogEntry(log=data.decode(errors="replace"), stream=stream, time=ts or rfc3339nano())
    return _encoder.encode(entry) + b"\n"


def read_entries(path: str | Path) -> Iterator[LogEntry]:
    """Every complete entry in the log file at `path` (a torn last line is skipped)."""
    with open(path, "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                yield _decoder.decode(line)
