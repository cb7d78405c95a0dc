"""One client attached to a process's output: a bounded queue, sent within the client's credit.

The bound (shared/messages/interactive.py): `window` bytes unacked on the wire and at most
`window` bytes queued here; a full queue tells the process's pump to stop reading
(`on_room` is called once there is room again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from shared import codec
from shared.messages.interactive import (FRAME_CHUNK, SESSION_TIMEOUT, WINDOW_MAX, WINDOW_MIN, AttachSpec,
                                         Frame)

log = logging.getLogger("dockyard.agent.interactive")


class Session:
    def __init__(self, nc, spec: AttachSpec):
        self.nc = nc
        self.id = spec.session
        self.inbox = spec.inbox
        self.stdin = spec.stdin
        self.window = max(WINDOW_MIN, min(spec.window or WINDOW_MIN, WINDOW_MAX))
        self._queue: deque[tuple[int, bytes]] = deque()
        self.queued = 0
        self.sent = 0  # output offset: data bytes published so far
        self.acked = 0
        self.last_seen = time.monotonic()
        self.on_room: Callable[[], None] | None = None
        self.closed = False
        self._final: Frame | None = None
        self._wake = asyncio.Event()
        self.done = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._send_loop())

    @property
    def full(self) -> bool:
        return self.queued >= self.window

    def offer(self, stream: int, data: bytes) -> None:
        if self.closed or self._final is not None:
            return
        self._queue.append((stream, data))
        self.queued += len(data)
        self._wake.set()

    def ack(self, offset: int) -> None:
        self.acked = max(self.acked, min(offset, self.sent))
        self.touch()
        self._wake.set()

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    def expired(self, now: float) -> bool:
        return now - self.last_seen > SESSION_TIMEOUT

    def finish(self, frame: Frame) -> None:
        """Send `frame` after what is queued, then end."""
        if self._final is None:
            self._final = frame
            self._wake.set()

    def close(self) -> None:
        """End now (the client left, or went silent): what is queued is dropped."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self.queued = 0
        self._task.cancel()
        if not self.done.done():
            self.done.set_result(None)
        self._room()

    async def _send_loop(self) -> None:
        try:
            while True:
                credit = self.window - (self.sent - self.acked)
                if self._queue and credit > 0:
                    await self._send_some(min(credit, FRAME_CHUNK))
                    continue
                if not self._queue and self._final is not None:
                    await self._publish(self._final)
                    return
                self._wake.clear()
                await self._wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken connection ends this session only
            log.warning("session %s: %s", self.id[:8], e)
        finally:
            self.closed = True
            if not self.done.done():
                self.done.set_result(None)

    async def _send_some(self, limit: int) -> None:
        stream, data = self._queue[0]
        # Adjacent chunks of one stream go out together, up to the frame's bound.
        parts, size = [], 0
        while self._queue and self._queue[0][0] == stream and size < limit:
            s, d = self._queue.popleft()
            if size + len(d) > limit:
                self._queue.appendleft((s, d[limit - size:]))
                d = d[:limit - size]
            parts.append(d)
            size += len(d)
        was_full = self.full
        self.queued -= size
        self.sent += size
        await self._publish(Frame(kind="out", stream=stream, data=b"".join(parts), offset=self.sent))
        if was_full and not self.full:
            self._room()

    def _room(self) -> None:
        if self.on_room is not None:
            self.on_room()

    async def _publish(self, frame: Frame) -> None:
        await self.nc.publish(self.inbox, codec.encode(frame))


async def wait_all(sessions: list[Session], timeout: float) -> None:
    """Until each session has sent its last frame (or `timeout`); the slow ones are closed."""
    if not sessions:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(asyncio.shield(s.done) for s in sessions)), timeout)
    for s in sessions:
        s.close()
