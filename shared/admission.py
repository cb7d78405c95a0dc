"""Bounded admission for an HTTP listener: at most N requests in flight, the rest wait briefly.

Under overload a registry must say "later" (429 with Retry-After) rather than take every
request and run out of memory or time out: each request in flight holds buffers (a blob
body being read, a stream being written), so the number in flight is what bounds a
listener's memory. A request that finds the listener full waits up to `wait` seconds for a
slot (short bursts are smoothed over, not refused), then is refused with
`Unavailable(detail_code=TOO_MANY_REQUESTS, detail={"retry_after": ...})`, which the
registry's error table turns into 429 TOOMANYREQUESTS with a Retry-After header.

A request with a body (a blob's bytes, a manifest) waits longer, `body_wait`: it continues
a push whose first request was admitted, and a client cannot send again a body it has
streamed (skopeo, like containers/image, retries a 429 only for requests without one), so
refusing it would fail the push instead of slowing it. Its wait is still bounded.

Nothing here decides who the caller is: an admitted request goes through authentication
as every other one does, and a refused one learns nothing but "too many requests".

Settings (per service, each listener its own limit):
    DOCKYARD_MAX_INFLIGHT       requests handled at once (default 256; 0 turns it off)
    DOCKYARD_ADMISSION_WAIT     seconds a request may wait for a slot (default 2)
    DOCKYARD_ADMISSION_BODY_WAIT  the same for a request with a body (default 60)
    DOCKYARD_RETRY_AFTER        the least Retry-After of a refusal, seconds (default 1); under
                                a longer overload it grows with it (`retry_after_now`)
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from aiohttp import web

from shared.errors import InvalidArgument, Unavailable

TOO_MANY_REQUESTS = "TOOMANYREQUESTS"  # the OCI distribution error code of a 429

DEFAULT_MAX_INFLIGHT = 256
DEFAULT_WAIT = 2.0
DEFAULT_BODY_WAIT = 60.0
DEFAULT_RETRY_AFTER = 1
MAX_RETRY_AFTER = 30


def _number(name: str, default: float, cast: type) -> float:
    raw = os.environ.get(f"DOCKYARD_{name}", "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError as e:
        raise InvalidArgument(f"DOCKYARD_{name}={raw!r} is not a number") from e
    if value < 0:
        raise InvalidArgument(f"DOCKYARD_{name}={raw!r} must not be negative")
    return value


class Admission:
    """A counting gate; `limit` 0 admits everything."""

    def __init__(self, limit: int = DEFAULT_MAX_INFLIGHT, *, wait: float = DEFAULT_WAIT,
                 body_wait: float = DEFAULT_BODY_WAIT, retry_after: int = DEFAULT_RETRY_AFTER):
        self.limit = limit
        self.wait = wait
        self.body_wait = max(wait, body_wait)
        self.retry_after = max(1, retry_after)
        self._slots = asyncio.Semaphore(limit) if limit else None
        self.inflight = 0
        self.waiting = 0
        self.refused = 0  # since start: what an operator reads to size the limit
        # admitted and refused in the current and the previous second (the Retry-After estimate)
        self._second = 0
        self._now = [0, 0]
        self._prev = [0, 0]

    @classmethod
    def from_env(cls, default_limit: int = DEFAULT_MAX_INFLIGHT) -> "Admission":
        """The settings of DOCKYARD_MAX_INFLIGHT and co; `default_limit` when it is unset."""
        return cls(int(_number("MAX_INFLIGHT", default_limit, int)),
                   wait=_number("ADMISSION_WAIT", DEFAULT_WAIT, float),
                   body_wait=_number("ADMISSION_BODY_WAIT", DEFAULT_BODY_WAIT, float),
                   retry_after=int(_number("RETRY_AFTER", DEFAULT_RETRY_AFTER, int)))

    def _count(self, refused: bool) -> None:
        second = int(time.monotonic())
        if second != self._second:
            self._prev = self._now if second == self._second + 1 else [0, 0]
            self._now = [0, 0]
            self._second = second
        self._now[refused] += 1

    def retry_after_now(self) -> int:
        """Seconds in which the requests refused lately can be served at the rate requests
        were admitted lately (at least the configured Retry-After, at most MAX_RETRY_AFTER):
        clients that wait as long as told then come back spread over that time instead of
        all at once, so a client that retries a few times only (skopeo: 5) gets through."""
        admitted, refused = self._prev[0] + self._now[0], self._prev[1] + self._now[1] + self.waiting
        estimate = math.ceil(refused / max(admitted, 1))
        return max(self.retry_after, min(MAX_RETRY_AFTER, estimate))

    def too_many(self) -> Unavailable:
        wait = self.retry_after_now()
        return Unavailable(f"too many requests in flight (limit {self.limit}): retry in {wait} s",
                           detail_code=TOO_MANY_REQUESTS, detail={"retry_after": wait})

    async def acquire(self, *, body: bool = False) -> None:
        """Take a slot, or raise `too_many()` once `wait` (`body_wait` for a request with a
        body) has passed without one."""
        if self._slots is None:
            return
        if self._slots.locked():
            self.waiting += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), self.body_wait if body else self.wait)
            except TimeoutError:
                raise self._refuse() from None
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self._count(False)
        self.inflight += 1

    def _refuse(self) -> Unavailable:
        self.refused += 1
        self._count(True)
        return self.too_many()

    async def enter(self, request: web.Request) -> None:
        """`acquire` for a request; while a body waits, its connection is not read (the
        bytes stay in the kernel's socket buffer, not in this process), so waiting uploads
        cost no memory here beyond what arrived with their headers."""
        body = request.body_exists
        transport = request.transport
        paused = body and transport is not None and self._slots is not None and self._slots.locked()
        if paused:
            transport.pause_reading()
        try:
            await self.acquire(body=body)
        finally:
            # unless aiohttp's own flow control holds it (a full read buffer): it resumes it then
            if paused and not transport.is_closing() and not getattr(request.protocol, "_reading_paused", False):
                transport.resume_reading()

    def release(self) -> None:
        if self._slots is not None:
            self.inflight -= 1
            self._slots.release()


def refuse_unread_body(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """A refused request whose body was never read: close the connection after the reply,
    so the unread bytes are not taken for the next request (and are not read to drain it)."""
    if request.body_exists:
        resp.force_close()
    return resp
