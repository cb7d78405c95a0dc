"""Small file helpers the agent's stores share: atomic JSON records."""

from __future__ import annotations

from pathlib import Path

import msgspec

from shared import codec
from shared.fsutil import write_atomic


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
