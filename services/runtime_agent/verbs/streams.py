"""Byte streams between the agent and a requester over the bus, in bounded memory.

Both directions are driven by the agent's requests to the requester's inbox (people may
only answer what they receive, never publish to an agent's inbox):
- out (cp from, export): each `Chunk` is a request; the requester's `ChunkAck` is its
  flow control. At most WINDOW chunks are unacknowledged, QUEUE more wait to be sent.
- in (cp to): the agent asks for chunk n with `ChunkWant`; WINDOW asks are in flight.
The bound is (WINDOW + QUEUE) * CHUNK = 8 MiB per stream, whatever the client's speed.
Blocking tar work runs in a thread, and meets the loop through a bounded queue
(`Produced`, `Consumed`: the copy plane, verbs/cpplane.py, streams through them too).
"""

from __future__ import annotations

import asyncio
import io
import queue
import threading
from collections.abc import Callable

import nats.errors

from shared import codec
from shared.errors import Unavailable
from shared.messages.verbs import Chunk, ChunkAck, ChunkWant, chunk_headers, chunk_of
from shared.tarcopy import CHUNK

WINDOW = 8
QUEUE = 8
_ASK_TIMEOUT = 60.0
_ack = codec.decoder(ChunkAck)


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
        if not self.buf and len(b) == CHUNK and isinstance(b, bytes):
            self._put(b)  # a tar's data block: handed on as it is, not copied twice more
            return len(b)
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


class Produced:
    """What `produce(file)`, run in a thread, writes: CHUNKs by `await next()`, None at its end.

    At most QUEUE chunks wait; the producer blocks until they are taken. A failed producer's
    error is raised by `next`."""

    def __init__(self, produce: Callable[[io.RawIOBase], object]):
        self.q: asyncio.Queue = asyncio.Queue(maxsize=QUEUE)
        self.stop = threading.Event()
        w = _ChunkWriter(asyncio.get_running_loop(), self.q, self.stop)

        def work() -> None:
            produce(w)
            w.finish()

        self.job = asyncio.ensure_future(asyncio.to_thread(work))

    async def next(self) -> bytes | None:
        get = asyncio.ensure_future(self.q.get())
        if not self.job.done():
            await asyncio.wait({get, self.job}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done() and self.job.exception() is not None:
                get.cancel()
                self.job.result()  # the producer failed: raise its error
        data = await get  # (a producer that finished queued its last chunks and None)
        if data is None:
            await self.job
        return data

    async def close(self) -> None:
        """Stop the producer (if it still runs) and wait for its thread."""
        self.stop.set()
        with _suppress():
            await self.job


async def send(nc, inbox: str, produce: Callable[[io.RawIOBase], object], *, raw: bool = False) -> int:
    """Run `produce(file)` in a thread and stream what it writes to `inbox`; the bytes sent.
    `raw`: the requester reads raw chunks (else each is a JSON Chunk, for an older one)."""
    produced = Produced(produce)
    inflight: list[asyncio.Task] = []
    seq = total = 0
    try:
        while (data := await produced.next()) is not None:
            inflight.append(asyncio.ensure_future(_ask(nc, inbox, Chunk(seq=seq, data=data), raw)))
            seq += 1
            total += len(data)
            if len(inflight) >= WINDOW:
                await inflight.pop(0)
        for t in inflight:
            await t
        await _ask(nc, inbox, Chunk(seq=seq, end=True), raw)
        return total
    except BaseException as e:
        for t in inflight:
            t.cancel()
        await produced.close()
        if not isinstance(e, Unavailable):
            last = Chunk(seq=seq, end=True, error=str(e) or type(e).__name__)
            with _suppress():
                if raw:
                    await nc.publish(inbox, b"", headers=chunk_headers(last))
                else:
                    await nc.publish(inbox, codec.encode(last))
        raise


async def _ask(nc, inbox: str, msg: Chunk | ChunkWant, raw: bool = False):
    """Send a Chunk (raw, or JSON) or a ChunkWant (JSON) as a request to `inbox`; the answer."""
    try:
        if isinstance(msg, Chunk) and raw:
            resp = await nc.request(inbox, msg.data, timeout=_ASK_TIMEOUT, headers=chunk_headers(msg))
        else:
            resp = await nc.request(inbox, codec.encode(msg), timeout=_ASK_TIMEOUT)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, asyncio.TimeoutError) as e:
        raise Unavailable("the requester stopped answering the stream") from e
    if isinstance(msg, Chunk):
        ack = _ack.decode(resp.data)
        if ack.error:
            raise Unavailable(f"the requester failed: {ack.error}")
    return resp


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


class Consumed:
    """`consume(file)` run in a thread over the chunks `feed` gives it (QUEUE wait at most)."""

    def __init__(self, consume: Callable[[io.BufferedReader], object]):
        self.q: queue.Queue = queue.Queue(maxsize=QUEUE)
        self.quit = threading.Event()  # the consumer returned: a blocked put gives up

        def work():
            try:
                return consume(io.BufferedReader(_ChunkReader(self.q), CHUNK))
            finally:
                self.quit.set()

        self.job = asyncio.ensure_future(asyncio.to_thread(work))

    @property
    def stopped(self) -> bool:
        """The consumer stopped reading (an error, or a tar's end): `result` says which."""
        return self.job.done()

    async def feed(self, item: bytes | bytearray | BaseException | None) -> None:
        """Give the consumer a chunk (None: the end; an exception: raised in its reads)."""
        try:
            self.q.put_nowait(item)  # the usual case: the consumer keeps up, no thread hop
        except queue.Full:
            await asyncio.to_thread(self._put, item)

    def _put(self, item) -> None:
        while not self.quit.is_set():
            try:
                self.q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    async def result(self):
        return await self.job

    async def abort(self, why: str) -> None:
        """End the consumer early (its reads raise Unavailable) and wait for its thread."""
        if self.job.done():
            return
        while True:  # a full queue drops a chunk for the error: once read, a consumer would wait for ever
            try:
                self.q.put_nowait(Unavailable(why))
                break
            except queue.Full:
                with _suppress():
                    self.q.get_nowait()
        with _suppress():
            await self.job


async def receive(nc, inbox: str, consume: Callable[[io.BufferedReader], object]):
    """Pull chunks from `inbox` (WINDOW asks ahead) into `consume(file)`, run in a thread; its result."""
    consumed = Consumed(consume)
    asks: list[asyncio.Task] = []
    seq = 0
    try:
        while True:
            while len(asks) < WINDOW:
                asks.append(asyncio.ensure_future(_ask(nc, inbox, ChunkWant(seq=seq, raw=True))))
                seq += 1
            done, _ = await asyncio.wait({asks[0], consumed.job}, return_when=asyncio.FIRST_COMPLETED)
            if consumed.job in done and asks[0] not in done:
                break  # the consumer stopped reading (an error, or a tar's end): its result says
            resp = asks.pop(0).result()
            c = chunk_of(resp.data, resp.headers)
            if c.error:
                await consumed.feed(Unavailable(f"the requester's stream failed: {c.error}"))
                break
            if c.data:
                await consumed.feed(c.data)
            if c.end:
                await consumed.feed(None)
                break
        return await consumed.result()
    finally:
        for t in asks:
            t.cancel()
        await consumed.abort("the stream ended early")


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return exc[0] is not None and issubclass(exc[0], Exception)
