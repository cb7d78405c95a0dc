"""Small file helpers the agent's stores share: atomic JSON records."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from shared import codec


def write_atomic(path: Path, data: bytes) -> None:
    """Stage next to `path`, fsync, rename: readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_record(path: Path, value: msgspec.Struct) -> None:
    write_atomic(path, codec.encode(value))


def read_record(path: Path, typ: type):
    """The record at `path`, or None if absent or unreadable (a torn write cannot happen)."""
    try:
        return codec.decoder(typ).decode(path.read_bytes())
    except FileNotFoundError:
        return None
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
