"""The stdio of one process that the agent holds: a pty master, or stdin/stdout/stderr pipes.

Output is read as it comes, written to the log (containers; not execs, as docker) and
offered to every attached session; while any session's queue is full nothing is read
(the process then blocks on its own write). Input from all sessions goes through one
ordered queue, written by one task: a handler never waits for the process to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import termios
from collections import deque
from collections.abc import Awaitable, Callable

from services.runtime_agent.interactive.jsonlog import JsonLog
from services.runtime_agent.interactive.session import Session, wait_all
from shared.errors import Conflict
from shared.messages.interactive import STDERR, STDOUT, Frame

log = logging.getLogger("dockyard.agent.interactive")

_READ = 64 << 10
_EOF = object()
OUTPUT_GRACE = 2.0  # after the exit, how long output still held open by a child is read
SEND_GRACE = 8.0  # how long sessions may take to take the rest (the monitor waits 10 s)

Reply = Callable[[Exception | None], Awaitable[None]]


class ProcessIO:
    def __init__(self, *, tty: bool, stdin: bool, log_path: str | None = None):
        self.tty = tty
        self.stdin_open = stdin
        self.sessions: dict[str, Session] = {}
        self.log = JsonLog(log_path) if log_path else None
        self._loop = asyncio.get_running_loop()
        self._outputs: dict[int, int] = {}  # fd -> stream
        self._stdin_fd = -1
        self._master = -1
        self._container_side: list[int] = []
        self._paused = False
        self._ended = self._loop.create_future()  # every output at EOF
        self._ready = asyncio.Event()  # fds are there (a pty master comes after the start)
        self._inputs: deque[tuple[object, Reply | None]] = deque()
        self._input_wake = asyncio.Event()
        self._writer = self._loop.create_task(self._write_loop())
        self.closed = False
        self.after_resize: Callable[[], object] | None = None  # a runtime in between to tell
        self._room_waiter: asyncio.Future | None = None

    # ---- wiring --------------------------------------------------------------------

    def make_pipes(self) -> tuple[int, int, int]:
        """Pipes for a process without a tty: the process's ends (stdin, stdout, stderr)."""
        in_r, in_w = os.pipe() if self.stdin_open else (os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self._container_side = [in_r, out_w, err_w]
        self._stdin_fd = in_w
        self._outputs = {out_r: STDOUT, err_r: STDERR}
        return in_r, out_w, err_w

    def output_fds(self) -> tuple[int, ...]:
        return tuple(self._outputs)

    def adopt_outputs(self, stdout_r: int, stderr_r: int) -> None:
        """Output pipes taken back from the shim (after an agent restart); stdin is gone."""
        self._outputs = {stdout_r: STDOUT, stderr_r: STDERR}
        self.stdin_open = False
        self._begin()

    def extra_output(self) -> int:
        """A pipe whose output counts as stderr (a runtime's own messages beside a pty); its write end."""
        r, w = os.pipe()
        self._container_side.append(w)
        self._outputs[r] = STDERR
        return w

    def started(self) -> None:
        """The process has its ends: ours are the only ones left here."""
        for fd in self._container_side:
            os.close(fd)
        self._container_side = []
        self._begin()

    def connect_master(self, master: int) -> None:
        self._master = master
        self._stdin_fd = master
        self._outputs[master] = STDOUT
        self._begin()

    def without_terminal(self) -> None:
        """The terminal never came (the runtime failed): read what it said all the same."""
        self._begin(force=True)

    def _begin(self, force: bool = False) -> None:
        if self.tty and self._master < 0 and not force:
            return  # the pipes wait for the terminal
        for fd in self._outputs:
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._readable, fd)
        if self._stdin_fd >= 0:
            os.set_blocking(self._stdin_fd, False)
        self._ready.set()

    # ---- sessions ------------------------------------------------------------------

    def attach(self, s: Session) -> None:
        s.on_room = self._maybe_resume
        self.sessions[s.id] = s  # one that comes after the end still gets the exit frame

    def detach(self, sid: str) -> None:
        s = self.sessions.pop(sid, None)
        if s is not None:
            s.close()
            self._maybe_resume()

    # ---- output --------------------------------------------------------------------

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: a pty whose other side has closed
        stream = self._outputs.get(fd)
        if stream is None:
            return
        if not data:
            self._loop.remove_reader(fd)
            del self._outputs[fd]
            if fd != self._master:
                os.close(fd)
            if not self._outputs and not self._ended.done():
                self._ended.set_result(None)
            return
        if self.log is not None:
            self.log.write(stream, data)
        full = False
        for s in list(self.sessions.values()):
            s.offer(stream, data)
            full = full or s.full
        if full:
            self._pause()

    def feed_output(self, stream: int, data: bytes) -> None:
        """Output that does not come from our fds (a log followed for `attach`)."""
        for s in list(self.sessions.values()):
            s.offer(stream, data)
        if any(s.full for s in self.sessions.values()):
            self._paused = True

    def outputs_done(self) -> None:
        if not self._ended.done():
            self._ended.set_result(None)

    async def room(self) -> None:
        """Until no session's queue is full (or every session is gone)."""
        while any(s.full and not s.closed for s in self.sessions.values()):
            self._room_waiter = self._loop.create_future()
            await self._room_waiter

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            for fd in self._outputs:
                self._loop.remove_reader(fd)

    def _maybe_resume(self) -> None:
        if self._paused and not any(s.full and not s.closed for s in self.sessions.values()):
            self._paused = False
            for fd in self._outputs:
                self._loop.add_reader(fd, self._readable, fd)
            if self._room_waiter is not None and not self._room_waiter.done():
                self._room_waiter.set_result(None)

    # ---- input ---------------------------------------------------------------------

    def feed(self, data: bytes, reply: Reply | None) -> None:
        """Queue stdin bytes (in the order fed); `reply` is called once they are written."""
        self._inputs.append((data, reply))
        self._input_wake.set()

    def feed_eof(self, reply: Reply | None) -> None:
        self._inputs.append((_EOF, reply))
        self._input_wake.set()

    def resize(self, rows: int, cols: int) -> None:
        if self._master >= 0 and rows > 0 and cols > 0:
            fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            if self.after_resize is not None:
                self.after_resize()

    async def _write_loop(self) -> None:
        while True:
            if not self._inputs:
                self._input_wake.clear()
                await self._input_wake.wait()
                continue
            item, reply = self._inputs.popleft()
            err: Exception | None = None
            try:
                await self._ready.wait()
                if item is _EOF:
                    self._close_stdin()
                else:
                    await self._write(item)  # type: ignore[arg-type]
            except Exception as e:  # noqa: BLE001 - the sender hears it
                err = e if isinstance(e, Conflict) else Conflict(f"stdin: {e}")
            if reply is not None:
                with contextlib.suppress(Exception):
                    await reply(err)

    async def _write(self, data: bytes) -> None:
        if self._stdin_fd < 0 or not self.stdin_open:
            raise Conflict("the process's stdin is closed")
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._stdin_fd, view)
                view = view[n:]
            except BlockingIOError:
                fut = self._loop.create_future()
                self._loop.add_writer(self._stdin_fd, lambda: fut.done() or fut.set_result(None))
                try:
                    await fut
                finally:
                    self._loop.remove_writer(self._stdin_fd)

    def _close_stdin(self) -> None:
        # A terminal has no end of input of its own (docker keeps it): only a pipe closes.
        if self._stdin_fd >= 0 and self._stdin_fd != self._master:
            os.close(self._stdin_fd)
            self._stdin_fd = -1
            self.stdin_open = False

    # ---- the end -------------------------------------------------------------------

    async def finish(self, exit_code: int | None, error: str = "") -> None:
        """The process ended: read what is left, send every session its last frame, close."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._ended), OUTPUT_GRACE)
        frame = Frame(kind="exit", exit_code=exit_code) if not error else Frame(kind="error", error=error)
        sessions = list(self.sessions.values())
        for s in sessions:
            s.finish(frame)
        await wait_all(sessions, SEND_GRACE)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._writer.cancel()
        for fd in list(self._outputs):
            self._loop.remove_reader(fd)
            if fd != self._master:
                os.close(fd)
        self._outputs.clear()
        for fd in {*self._container_side, self._stdin_fd, self._master} - {-1}:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._container_side = []
        self._stdin_fd = self._master = -1
        for s in self.sessions.values():
            s.close()
        self.sessions.clear()
        if self.log is not None:
            self.log.close()
        if not self._ended.done():
            self._ended.set_result(None)
