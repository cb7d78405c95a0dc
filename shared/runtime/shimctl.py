"""The caller's side of the shim protocol (shim.py): starting shims, spares, their pipes.

A shim is started cold (`start_cold`, Python boots on the start path) or handed
its arguments as a booted spare (`Spare`). Either way the caller reads lines
from the shim's sync pipe with a `LineReader`: `ok ...` or `error ...` at the
start, later `exit <code>` once exit.json is written.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from shared.errors import Unavailable
from shared.runtime import records
from shared.runtime.records import ShimRecord

SHIM = Path(__file__).with_name("shim.py")
# -S -I: no site, no environment; the shim needs the stdlib only.
_PYTHON = (sys.executable, "-S", "-I", str(SHIM))


def start_cold(sdir: Path, args: list[str], pass_fds: tuple[int, ...] = ()) -> tuple[subprocess.Popen, int]:
    """A shim for `args` (ID BUNDLE LOG STATE MEMCG RUNTIME...): its first half, its sync pipe.

    `pass_fds`: the container's stdio when the caller keeps it (`--stdio=` in `args`)."""
    sync_r, sync_w = os.pipe()
    try:
        with open(sdir / "shim.log", "ab") as shim_log:
            proc = subprocess.Popen([*_PYTHON, str(sync_w), *args], pass_fds=(sync_w, *pass_fds),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=shim_log, start_new_session=True)
    except OSError as e:
        os.close(sync_r)
        raise Unavailable(f"cannot start the container shim: {e}") from e
    finally:
        os.close(sync_w)
    return proc, sync_r


class Spare:
    """A booted shim waiting for its arguments on `ctl_w`; it answers on `sync_r`.

    Keeping one ready takes Python's boot (~10 ms) off a container's start.
    """

    def __init__(self, proc: subprocess.Popen, ctl_w: int, sync_r: int):
        self.proc, self.ctl_w, self.sync_r = proc, ctl_w, sync_r

    @classmethod
    def boot(cls) -> "Spare | None":
        ctl_r, ctl_w = os.pipe()
        sync_r, sync_w = os.pipe()
        try:
            proc = subprocess.Popen([*_PYTHON, "--spare", str(ctl_r), str(sync_w)], pass_fds=(ctl_r, sync_w),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            os.close(ctl_w)
            os.close(sync_r)
            return None  # starts fall back to a shim of their own
        finally:
            os.close(ctl_r)
            os.close(sync_w)
        return cls(proc, ctl_w, sync_r)

    def hand(self, args: list[str]) -> bool:
        """Give the spare its container; False if it is dead (then discarded)."""
        try:
            os.write(self.ctl_w, b"\0".join(a.encode("utf-8", "surrogateescape") for a in args) + b"\n")
        except OSError:
            self.discard()
            return False
        os.close(self.ctl_w)
        return True

    def discard(self) -> None:
        os.close(self.ctl_w)  # EOF: the spare exits
        os.close(self.sync_r)
        self.proc.wait()


def log_tail(sdir: Path) -> str:
    """The end of a shim's stderr (its Python traceback, if it died); '' if none."""
    try:
        return (sdir / "shim.log").read_text(errors="replace")[-2000:]
    except FileNotFoundError:
        return ""


async def wait_shim_gone(sdir: Path, timeout: float = 10.0) -> None:
    """Wait for an exited container's shim to finish (its runtime `delete`) instead of racing it."""
    shim = records.read(sdir / "shim.json", ShimRecord)
    if shim is None or not (sdir / "exit.json").exists():
        return
    fd = records.open_pidfd(shim.shim_pid, shim.shim_start)
    if fd is None:
        return
    try:
        await records.wait_pidfd(fd, timeout)
    except TimeoutError:
        pass  # a stuck `delete`: ours below does the work
    finally:
        os.close(fd)


class LineReader:
    """Lines from a shim's sync pipe, without blocking the loop; '' once it closes."""

    def __init__(self, fd: int):
        self.fd = fd
        self._buf = bytearray()
        self._eof = False
        self._waiter: asyncio.Future | None = None
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        self._buf += chunk
        self._eof = not chunk
        if self._eof:
            self._loop.remove_reader(self.fd)
        if self._waiter is not None and not self._waiter.done() and (self._eof or b"\n" in self._buf):
            self._waiter.set_result(None)

    def _take(self) -> str | None:
        if b"\n" in self._buf:
            line, _, rest = bytes(self._buf).partition(b"\n")
            self._buf = bytearray(rest)
            return line.decode(errors="replace")
        return "" if self._eof else None

    async def line(self) -> str:
        while (got := self._take()) is None:
            self._waiter = self._loop.create_future()
            await self._waiter
        return got

    def on_line(self, cb: Callable[[str], object]) -> None:
        """Call `cb(line)` once with the next line ('' on EOF), then close."""
        async def one() -> None:
            try:
                cb(await self.line())
            finally:
                self.close()
        self._task = self._loop.create_task(one())

    def close(self) -> None:
        live = not self._loop.is_closed()
        if live and self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()  # a listener for the exit stops listening
        if self.fd >= 0:
            if live and not self._eof:
                self._loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
