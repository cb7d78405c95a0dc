"""Byte streams between the agent and a requester over the bus, in bounded memory.

Both directions are driven by the agent's requests to the requester's inbox (people may
only answer what they receive, never publish to an agent's inbox):
- out (cp from, export): each `Chunk` is a request; the requester's `ChunkAck` is its
  flow control. At most WINDOW chunks are unacknowledged, QUEUE more wait to be sent.
- in (cp to): the agent asks for chunk n with `ChunkWant`; WINDOW asks are in flight.
The bound is (WINDOW + QUEUE) * CHUNK = 8 MiB per stream, whatever the client's speed.
Blocking tar work runs in a thread, and meets the loop through a bounded queue.
"""

from __future__ import annotations

import asyncio
import io
import queue
import threading
from collections.abc import Callable

import msgspec
import nats.errors

from shared import codec
from shared.errors import Unavailable
from shared.messages.verbs import Chunk, ChunkAck, ChunkWant
from shared.tarcopy import CHUNK

WINDOW = 8
QUEUE = 8
_ASK_TIMEOUT = 60.0
_ack = codec.decoder(ChunkAck)
_chunk = codec.decoder(Chunk)


class _Aborted(Exception):
    pass


class _ChunkWriter(io.RawIOBase):
    """A file the tar thread writes; whole CHUNKs go to the loop's queue (blocking when full)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, q: asyncio.Queue, stop: threading.Event):
        self.loop, self.q, self.stop = loop, q, stop
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if self.stop.is_set():
            raise _Aborted("the requester went away")
        self.buf += b
        while len(self.buf) >= CHUNK:
            self._put(bytes(self.buf[:CHUNK]))
            del self.buf[:CHUNK]
        return len(b)

    def _put(self, data: bytes | None) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.q.put(data), self.loop)
        while True:
            try:
                fut.result(timeout=1.0)
                return
            except TimeoutError:
                if self.stop.is_set():
                    fut.cancel()
                    raise _Aborted("the requester went away") from None

    def finish(self) -> None:
        if self.buf:
            self._put(bytes(self.buf))
            self.buf.clear()
        self._put(None)


async def send(nc, inbox: str, produce: Callable[[io.RawIOBase], object]) -> int:
    """Run `produce(file)` in a thread and stream what it writes to `inbox`; the bytes sent."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue(maxsize=QUEUE)
    stop = threading.Event()
    w = _ChunkWriter(loop, q, stop)

    def work() -> None:
        produce(w)
        w.finish()

    job = asyncio.ensure_future(asyncio.to_thread(work))
    inflight: list[asyncio.Task] = []
    seq = total = 0
    try:
        while True:
            get = asyncio.ensure_future(q.get())
            if not job.done():
                await asyncio.wait({get, job}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done() and job.exception() is not None:
                    get.cancel()
                    job.result()  # the producer failed: raise its error
            data = await get  # (a producer that finished queued its last chunks and None)
            if data is None:
                break
            inflight.append(asyncio.ensure_future(_ask(nc, inbox, Chunk(seq=seq, data=data))))
            seq += 1
            total += len(data)
            if len(inflight) >= WINDOW:
                await inflight.pop(0)
        for t in inflight:
            await t
        await job
        await _ask(nc, inbox, Chunk(seq=seq, end=True))
        return total
    except BaseException as e:
        stop.set()
        for t in inflight:
            t.cancel()
        with _suppress():
            await job
        if not isinstance(e, Unavailable):
            with _suppress():
                await nc.publish(inbox, codec.encode(Chunk(seq=seq, end=True, error=str(e) or type(e).__name__)))
        raise


async def _ask(nc, inbox: str, msg: msgspec.Struct) -> bytes:
    try:
        resp = await nc.request(inbox, codec.encode(msg), timeout=_ASK_TIMEOUT)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, asyncio.TimeoutError) as e:
        raise Unavailable("the requester stopped answering the stream") from e
    if isinstance(msg, Chunk):
        ack = _ack.decode(resp.data)
        if ack.error:
            raise Unavailable(f"the requester failed: {ack.error}")
    return resp.data


class _ChunkReader(io.RawIOBase):
    """A file the tar thread reads, fed chunk by chunk from the loop (blocking when empty)."""

    def __init__(self, q: queue.Queue):
        self.q = q
        self.buf = b""
        self.eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self.buf and not self.eof:
            item = self.q.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                self.eof = True
            else:
                self.buf = item
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


async def receive(nc, inbox: str, consume: Callable[[io.BufferedReader], object]):
    """Pull chunks from `inbox` (WINDOW asks ahead) into `consume(file)`, run in a thread; its result."""
    q: queue.Queue = queue.Queue(maxsize=QUEUE)
    job = asyncio.ensure_future(asyncio.to_thread(consume, io.BufferedReader(_ChunkReader(q), CHUNK)))
    asks: list[asyncio.Task] = []
    seq = 0
    try:
        while True:
            while len(asks) < WINDOW:
                asks.append(asyncio.ensure_future(_ask(nc, inbox, ChunkWant(seq=seq))))
                seq += 1
            done, _ = await asyncio.wait({asks[0], job}, return_when=asyncio.FIRST_COMPLETED)
            if job in done and asks[0] not in done:
                break  # the consumer stopped reading (an error, or a tar's end): its result says
            c = _chunk.decode(asks.pop(0).result())
            if c.error:
                await asyncio.to_thread(q.put, Unavailable(f"the requester's stream failed: {c.error}"))
                break
            if c.data:
                await asyncio.to_thread(q.put, c.data)
            if c.end:
                await asyncio.to_thread(q.put, None)
                break
        return await job
    finally:
        for t in asks:
            t.cancel()
        if not job.done():
            with _suppress():
                q.put_nowait(Unavailable("the stream ended early"))
            with _suppress():
                await job


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return exc[0] is not None and issubclass(exc[0], Exception)
