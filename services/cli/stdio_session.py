"""The CLI's side of a session on a process's stdio (shared/messages/interactive.py).

Output frames are written to our stdout/stderr as they come and acked once written, so a
slow terminal or pipe holds the agent back instead of filling it. Input is read from
our stdin and sent as ordered requests, at most STDIN_IN_FLIGHT unanswered. With a tty
the detach keys end the session and leave the process running.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat

from services.cli.terminal import DetachMatcher, size, write_all
from shared import codec, subjects
from shared.bus_reply import decode_reply
from shared.errors import DockyardError, Unavailable
from shared.messages.interactive import (KEEPALIVE, STDERR, STDIN_CHUNK, STDIN_IN_FLIGHT, WINDOW_DEFAULT,
                                         AttachSpec, Frame, Input, InputReply)

DETACHED = "detached"
_REPLY_TIMEOUT = 60.0


class ClientSession:
    def __init__(self, client, host: str, *, stdin: bool, tty: bool = False, detach_keys: bytes | None = None,
                 window: int = WINDOW_DEFAULT):
        self.client = client
        self.nc = client.nc
        self.host = host
        self.subject = subjects.agent(host, subjects.AGENT_STDIN)
        self.id = os.urandom(16).hex()  # secrets' source, without its hmac/random imports
        self.inbox = self.nc.new_inbox()
        self.stdin = stdin
        self.tty = tty
        self.window = window
        self.detach = DetachMatcher(detach_keys) if detach_keys else None
        self.received = 0
        self._acked = 0
        loop = asyncio.get_running_loop()
        self.end: asyncio.Future = loop.create_future()  # the exit/error Frame, or DETACHED
        self._replies: dict[str, asyncio.Future] = {}
        self._reply_prefix = self.nc.new_inbox()
        self._subs: list = []
        self._tasks: list[asyncio.Task] = []
        self._dec = codec.decoder(Frame)

    def spec(self) -> AttachSpec:
        rows, cols = size() if self.tty else (0, 0)
        return AttachSpec(session=self.id, inbox=self.inbox, stdin=self.stdin, window=self.window,
                          rows=rows, cols=cols)

    async def __aenter__(self) -> "ClientSession":
        self._subs.append(await self.nc.subscribe(self.inbox, cb=self._on_frame))
        self._subs.append(await self.nc.subscribe(self._reply_prefix + ".*", cb=self._on_reply))
        return self

    async def __aexit__(self, *exc) -> None:
        loop = asyncio.get_running_loop()
        if self.tty:
            loop.remove_signal_handler(signal.SIGWINCH)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except BaseException:  # noqa: BLE001 - ending anyway
                pass
        if self._reader_fd is not None:
            loop.remove_reader(self._reader_fd)
            self._reader_fd = None
        for s in self._subs:
            try:
                await s.unsubscribe()
            except Exception:  # noqa: BLE001
                pass

    _reader_fd: int | None = None

    async def run(self) -> Frame | str:
        """Pump until the process ends (its last Frame) or we detach (DETACHED)."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._keepalive()))
        if self.stdin:
            self._tasks.append(loop.create_task(self._pump_stdin()))
        if self.tty:
            loop.add_signal_handler(signal.SIGWINCH, self._on_winch)
        return await self.end

    def leave(self) -> None:
        """Detach (the detach keys, or a signal): the process goes on without us."""
        if not self.end.done():
            self.end.set_result(DETACHED)
            asyncio.get_running_loop().create_task(self._send(Input(session=self.id, kind="close")))

    # ---- output --------------------------------------------------------------------

    async def _on_frame(self, msg) -> None:
        try:
            f = self._dec.decode(msg.data)
        except Exception:  # noqa: BLE001 - not ours to answer
            return
        if f.kind == "out":
            write_all(2 if f.stream == STDERR else 1, f.data)
            self.received = f.offset
            if self.received - self._acked >= self.window // 4:
                await self._ack()
        elif not self.end.done():
            self.end.set_result(f)

    async def _ack(self) -> None:
        self._acked = self.received
        await self._send(Input(session=self.id, kind="ack", acked=self.received))

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE)
            await self._ack()

    def _on_winch(self) -> None:
        rows, cols = size()
        asyncio.get_running_loop().create_task(
            self._send(Input(session=self.id, kind="resize", rows=rows, cols=cols)))

    async def _send(self, inp: Input) -> None:
        try:
            await self.nc.publish(self.subject, codec.encode(inp))
        except Exception:  # noqa: BLE001 - the connection is gone: the end says so
            pass

    # ---- input ---------------------------------------------------------------------

    async def _on_reply(self, msg) -> None:
        fut = self._replies.pop(msg.subject.rsplit(".", 1)[-1], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def _request(self, inp: Input) -> asyncio.Future:
        """Publish now (in order); the future resolves with the reply."""
        token = os.urandom(8).hex()
        fut = asyncio.get_running_loop().create_future()
        self._replies[token] = fut
        await self.nc.publish(self.subject, codec.encode(inp), reply=f"{self._reply_prefix}.{token}")
        return fut

    async def _pump_stdin(self) -> None:
        in_flight: set[asyncio.Future] = set()
        try:
            while True:
                for d in [f for f in in_flight if f.done()]:
                    in_flight.discard(d)
                    decode_reply(d.result(), InputReply)  # a refusal ends the session now
                while len(in_flight) >= STDIN_IN_FLIGHT:
                    done, in_flight = await asyncio.wait(in_flight, timeout=_REPLY_TIMEOUT,
                                                         return_when=asyncio.FIRST_COMPLETED)
                    if not done:
                        raise Unavailable("the agent did not take our input")
                    for d in done:
                        decode_reply(d.result(), InputReply)
                data = await self._read(STDIN_CHUNK)
                if not data:
                    break
                if self.detach is not None:
                    data, detached = self.detach.feed(data)
                    if detached:
                        if data:
                            in_flight.add(await self._request(Input(session=self.id, kind="data", data=data)))
                        self.leave()
                        return
                if data:
                    in_flight.add(await self._request(Input(session=self.id, kind="data", data=data)))
            if in_flight:
                await asyncio.wait(in_flight, timeout=_REPLY_TIMEOUT)
            if not self.tty:
                fut = await self._request(Input(session=self.id, kind="eof"))
                await asyncio.wait_for(fut, _REPLY_TIMEOUT)
        except DockyardError as e:
            if not self.end.done():
                self.end.set_result(Frame(kind="error", error=f"stdin: {e.message}"))

    async def _read(self, n: int) -> bytes:
        """Up to `n` bytes of our stdin ('' at its end), without blocking the loop."""
        fd = 0
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
            return await asyncio.to_thread(os.read, fd, n)  # a file is always readable
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        self._reader_fd = fd
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(fd)
            self._reader_fd = None
        try:
            return os.read(fd, n)
        except OSError:
            return b""  # EIO: the terminal went away
