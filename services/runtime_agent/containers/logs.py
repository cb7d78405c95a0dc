"""Reading a container's json-file log and streaming it to a requester's inbox.

The shim appends whole lines; a reader follows the file by polling (the log is on a
local disk: a read that finds nothing costs microseconds), every 2 ms at first and
slowing to every 50 ms while nothing comes, so that a short container's first line
is not held back by a long poll. It stops once the container has exited and the
rest of the file is read (the exit wakes it at once), or once the requester is
gone (a `ping` request finds no responder).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path

import msgspec
import nats.errors

from shared import codec
from shared.messages.agent import LogLine, StreamMessage

_POLL_FIRST = 0.002
_POLL = 0.05
_BATCH_BYTES = 64 << 10
_PING_EVERY = 5.0
_entry = msgspec.json.Decoder()


def _parse(line: bytes) -> LogLine | None:
    try:
        e = _entry.decode(line)
        return LogLine(stream=e.get("stream", "stdout"), time=e.get("time", ""), line=e.get("log", ""))
    except (msgspec.DecodeError, AttributeError):
        return None


class LogReader:
    """Complete lines of one log file, from where the last read stopped."""

    def __init__(self, path: Path):
        self.path = path
        self._f = None
        self._partial = b""

    def read(self) -> list[LogLine]:
        if self._f is None:
            try:
                self._f = open(self.path, "rb")
            except FileNotFoundError:
                return []
        data = self._partial + self._f.read()
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an unterminated tail waits for its newline
        return [p for p in map(_parse, lines) if p is not None]

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def tail(lines: list[LogLine], n: int) -> list[LogLine]:
    return lines if n < 0 else list(deque(lines, maxlen=n)) if n else []


class Streamer:
    """Sends LogLines to an inbox in batches; notices a requester that went away."""

    def __init__(self, nc, inbox: str):
        self.nc = nc
        self.inbox = inbox
        self._last_ping = time.monotonic()
        self.gone = False

    async def send(self, lines: list[LogLine]) -> None:
        batch: list[LogLine] = []
        size = 0
        for ln in lines:
            batch.append(ln)
            size += len(ln.line) + 48
            if size >= _BATCH_BYTES:
                await self._publish(StreamMessage(kind="output", lines=batch))
                batch, size = [], 0
        if batch:
            await self._publish(StreamMessage(kind="output", lines=batch))

    async def progress(self, message: str) -> None:
        await self._publish(StreamMessage(kind="progress", message=message))

    async def end(self, exit_code: int | None = None, error: str = "") -> None:
        await self._publish(StreamMessage(kind="end", exit_code=exit_code, error=error))

    async def alive(self) -> bool:
        """Ask the requester, every few seconds, whether it still listens."""
        if self.gone:
            return False
        now = time.monotonic()
        if now - self._last_ping < _PING_EVERY:
            return True
        self._last_ping = now
        try:
            await self.nc.request(self.inbox, codec.encode(StreamMessage(kind="ping")), timeout=2.0)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, asyncio.TimeoutError):
            self.gone = True
        return not self.gone

    async def _publish(self, msg: StreamMessage) -> None:
        if self.inbox:
            await self.nc.publish(self.inbox, codec.encode(msg))


async def follow(reader: LogReader, streamer: Streamer, exited: asyncio.Event) -> None:
    """Stream new lines until the container has exited (then the rest) or the requester left."""
    poll = _POLL_FIRST
    try:
        while True:
            done = exited.is_set()
            lines = reader.read()
            if lines:
                await streamer.send(lines)
                poll = _POLL_FIRST
            if done:
                return
            if not await streamer.alive():
                return
            if not lines:
                try:
                    await asyncio.wait_for(exited.wait(), poll)
                except asyncio.TimeoutError:
                    poll = min(poll * 2, _POLL)
    finally:
        reader.close()
