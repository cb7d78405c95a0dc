"""Ports for tests without luck: servers bind 0 and say which port they got; a port that must
refuse connections is held bound (never listening) for as long as the test needs it."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from pathlib import Path


def address_from_log(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """The first match of `pattern`'s group 1 in a server's log (e.g. "listening on (\\S+)")."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        try:
            m = rx.search(log.read_text(errors="replace"))
        except FileNotFoundError:
            m = None
        if m:
            return m.group(1)
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args[0]} said no address matching {pattern!r}:\n"
                               f"{log.read_text(errors='replace') if log.exists() else ''}")
        time.sleep(0.05)


@contextlib.contextmanager
def refusing_port(host: str = "127.0.0.1"):
    """A port where connecting is refused: bound by us, not listening, so nobody else gets it."""
    with socket.socket() as s:
        s.bind((host, 0))
        yield s.getsockname()[1]
