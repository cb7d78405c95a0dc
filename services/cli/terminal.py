"""The user's terminal: raw mode (restored on every way out), its size, detach key sequences."""

from __future__ import annotations

import os
import sys

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"


class RawMode:
    """Raw mode on `fd` while inside (nothing if it is not a terminal); the old mode restored after.

    Restored on an exception, a return and the signals the CLI handles alike; only SIGKILL
    leaves the terminal raw (`reset` fixes it), as with docker.
    """

    def __init__(self, fd: int = 0, enabled: bool = True):
        self.fd = fd
        self.enabled = enabled and os.isatty(fd)
        self._saved = None

    def __enter__(self) -> "RawMode":
        if self.enabled:
            import termios
            import tty
            self._saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd, termios.TCSANOW)
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is not None:
            import termios
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None


def size(fd: int | None = None) -> tuple[int, int]:
    """(rows, cols) of the terminal on stdout (else stdin); (0, 0) without one."""
    for f in ((fd,) if fd is not None else (1, 0)):
        try:
            cols, rows = os.get_terminal_size(f)
            return rows, cols
        except OSError:
            continue
    return 0, 0


def parse_detach_keys(text: str) -> bytes:
    """docker's --detach-keys: comma-separated `ctrl-<x>` or single characters."""
    from shared.errors import InvalidArgument
    out = bytearray()
    for part in text.split(","):
        p = part.strip().lower()
        if len(p) == 1:
            out.append(ord(p))
        elif p.startswith("ctrl-") and len(p) == 6:
            ch = p[5]
            if "a" <= ch <= "z":
                out.append(ord(ch) - ord("a") + 1)
            elif ch in "@[\\]^_":
                out.append(ord(ch.upper() if ch != "@" else "@") - 64)
            else:
                raise InvalidArgument(f"invalid detach keys {text!r}: unknown key {part!r}")
        else:
            raise InvalidArgument(f"invalid detach keys {text!r}: expected ctrl-<key> or one character, "
                                  f"not {part!r}")
    if not out:
        raise InvalidArgument("--detach-keys needs at least one key")
    return bytes(out)


class DetachMatcher:
    """Finds the detach sequence in typed input; holds a partial match until it is decided."""

    def __init__(self, keys: bytes):
        self.keys = keys
        self.matched = 0

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(the bytes to send on, whether the whole sequence was typed)."""
        out = bytearray()
        for b in data:
            if b == self.keys[self.matched]:
                self.matched += 1
                if self.matched == len(self.keys):
                    self.matched = 0
                    return bytes(out), True
                continue
            out += self.keys[:self.matched]
            self.matched = 0
            if b == self.keys[0]:
                self.matched = 1
            else:
                out.append(b)
        return bytes(out), False


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            import select
            select.select([], [fd], [])


def stderr_line(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()
