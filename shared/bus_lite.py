"""A lean NATS client for the CLI: the `shared.bus.BusClient` interface without nats-py.

Every `dockyard` command is a new process, and importing nats-py (its JetStream
dataclasses, its transports) costs more than the command's whole bus traffic. This
module speaks the NATS client protocol (CONNECT, PING/PONG, SUB/UNSUB, PUB, MSG,
HMSG) over one asyncio connection and offers what CLI handlers use: `request`,
`request_with_progress`, `gather`, `publish`, `subscribe`, plus a one-round-trip
read of a KV bucket's live entries. `nats://` only, upgraded to TLS when the server
demands it and a CA is given; for `tls://`, websockets, or TLS without a CA,
`NeedFullClient` tells the caller to use `shared.bus`.
Services keep nats-py (reconnects, JetStream, micro). The wire format (URLs, frames,
headers) is shared.nats_wire's and the typed verbs shared.bus_lite_client's, both shared
with shared.bus_blocking (the same client without an event loop).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from shared.bus_lite_client import LiteBusClient
from shared.errors import DockyardError, PermissionDenied, Unauthenticated, Unavailable
from shared.nats_wire import (NO_RESPONDERS, Frames, Msg, NeedFullClient, connect_line, parse_url, publish_frame,
                              refused_publish, split_message)

if TYPE_CHECKING:
    from shared.credentials import UserCreds

__all__ = ["Connection", "LiteBusClient", "NeedFullClient", "connect", "parse_url"]


class Subscription:
    """Messages of one SUB: to `cb` (in order, one at a time) or through `messages`."""

    def __init__(self, conn: "Connection", sid: int, subject: str, cb: Callable[[Msg], Any] | None):
        self._conn = conn
        self.sid = sid
        self.subject = subject
        self._queue: asyncio.Queue[Msg | None] = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run(cb)) if cb else None

    async def _run(self, cb: Callable[[Msg], Any]) -> None:
        while (m := await self._queue.get()) is not None:
            try:
                r = cb(m)
                if asyncio.iscoroutine(r):
                    await r
            except Exception:  # noqa: BLE001 - like nats-py: one bad message does not end the rest
                logging.getLogger("dockyard.bus").exception("handler of %s failed", self.subject)

    @property
    async def messages(self) -> AsyncIterator[Msg]:
        while (m := await self._queue.get()) is not None:
            yield m

    async def next_msg(self, timeout: float) -> Msg:
        m = await asyncio.wait_for(self._queue.get(), timeout)
        if m is None:
            raise Unavailable("NATS connection closed")
        return m

    def _deliver(self, m: Msg | None) -> None:
        self._queue.put_nowait(m)

    async def unsubscribe(self) -> None:
        self._conn._unsubscribe(self)
        self._deliver(None)
        if self._worker is not None:
            await self._worker  # what was already delivered is handled: nats-py's drain


class Connection(asyncio.Protocol):
    """One NATS client connection: the protocol parser and the verbs on top of it."""

    def __init__(self, name: str = "dockyard-cli", creds: "UserCreds | None" = None, ca: str = ""):
        self.name = name
        self.creds = creds
        self.ca = ca  # the fleet CA file: a server demanding TLS is verified against it
        # A principal may subscribe only under its own prefix (shared/permissions.py).
        self._inbox = (creds.inbox if creds is not None else "_INBOX") + "."
        self.info: dict[str, Any] = {}
        self._transport: asyncio.Transport | None = None
        self._frames = Frames()
        self._subs: dict[int, Subscription] = {}
        self._next_sid = 1
        self._pongs: deque[asyncio.Future] = deque()
        self._info_seen: asyncio.Future | None = None
        self._error: str = ""
        self._closed = False
        self._resp_prefix = ""
        self._resp_waiters: dict[str, tuple[asyncio.Future, str]] = {}  # token -> (reply, subject)

    # ---- connecting ----------------------------------------------------------------

    async def connect(self, url: str, timeout: float = 3.0) -> "Connection":
        last: Exception | None = None
        for host, port, auth in parse_url(url):
            try:
                await asyncio.wait_for(self._connect_one(host, port, auth), timeout)
                return self
            except NeedFullClient:
                raise
            except (OSError, asyncio.TimeoutError, Unavailable) as e:
                last = e
                self._reset()
        if "authorization violation" in str(last).lower():
            raise Unauthenticated(f"NATS at {url.rpartition('@')[2]} refused the credentials: "
                                  "Authorization Violation") from last
        raise Unavailable(f"cannot reach NATS at {url}: {str(last) or 'timed out'}") from last

    async def _connect_one(self, host: str, port: int, auth: dict[str, str]) -> None:
        loop = asyncio.get_running_loop()
        self._info_seen = loop.create_future()
        await loop.create_connection(lambda: self, host, port)
        await self._info_seen
        if self.info.get("tls_required"):
            if not self.ca:
                self._reset()
                raise NeedFullClient("the server requires TLS")
            from shared import tls  # ssl costs an import only when a server demands it
            self._transport = await loop.start_tls(self._transport, self, tls.client_context(self.ca),
                                                   server_hostname=host)
        self._write(connect_line(self.name, self.info, auth, self.creds))
        pong = loop.create_future()
        self._pongs.append(pong)
        await pong  # or the server's -ERR (authorization violation), as Unavailable

    def _reset(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = None
        self._frames = Frames()
        self._pongs.clear()
        self._error = ""
        self._closed = False

    # ---- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        why = self._error or (str(exc) if exc else "connection closed")
        err = Unavailable(f"NATS: {why}")
        for f in [*self._pongs, *(f for f, _ in self._resp_waiters.values())]:
            if not f.done():
                f.set_exception(err)
        if self._info_seen is not None and not self._info_seen.done():
            self._info_seen.set_exception(err)
        for sub in self._subs.values():
            sub._deliver(None)

    def data_received(self, data: bytes) -> None:
        for op in self._frames.feed(data):
            if op[0] == "MSG":
                self._dispatch(*op[1:])
            else:
                self._control(op[0], op[1])

    def _control(self, op: str, rest: bytes) -> None:
        if op == "PING":
            self._write(b"PONG\r\n")
        elif op == "PONG":
            if self._pongs:
                f = self._pongs.popleft()
                if not f.done():
                    f.set_result(None)
        elif op == "INFO":
            self.info = msgspec.json.decode(rest)
            if self._info_seen is not None and not self._info_seen.done():
                self._info_seen.set_result(None)
        elif op == "-ERR":
            self._error = rest.decode(errors="replace").strip(" '")
            subject = refused_publish(self._error)
            if subject:
                # The server stays connected; only the requests to that subject are refused.
                for f, s in list(self._resp_waiters.values()):
                    if s == subject and not f.done():
                        f.set_exception(PermissionDenied(f"permission denied: publish to {subject}",
                                                         detail=subject))
            # The server closes the connection after every -ERR that matters to us
            # (authorization, parser); connection_lost reports it to the waiters.

    def _dispatch(self, subject: str, sid: int, reply: str, payload: bytes, hdr_len: int) -> None:
        headers, status, data = split_message(payload, hdr_len)
        m = Msg(self, subject, reply, data, headers, status)
        if self._resp_prefix and subject.startswith(self._resp_prefix):
            f, _ = self._resp_waiters.pop(subject[len(self._resp_prefix):], (None, ""))
            if f is not None and not f.done():
                f.set_result(m)
            return
        sub = self._subs.get(sid)
        if sub is not None:
            sub._deliver(m)

    def _write(self, data: bytes) -> None:
        if self._transport is None or self._closed:
            raise Unavailable("NATS connection closed")
        self._transport.write(data)

    # ---- verbs -------------------------------------------------------------------------

    def new_inbox(self) -> str:
        return self._inbox + os.urandom(12).hex()

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "",
                      headers: dict[str, str] | None = None) -> None:
        self._write(publish_frame(subject, payload, reply, self.info.get("max_payload", 1 << 20), headers))

    async def subscribe(self, subject: str, cb: Callable[[Msg], Any] | None = None) -> Subscription:
        sid = self._next_sid
        self._next_sid += 1
        sub = Subscription(self, sid, subject, cb)
        self._subs[sid] = sub
        self._write(f"SUB {subject} {sid}\r\n".encode())
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if self._subs.pop(sub.sid, None) is not None and not self._closed:
            self._write(f"UNSUB {sub.sid}\r\n".encode())

    async def request(self, subject: str, payload: bytes = b"", timeout: float = 10.0) -> Msg:
        """The first reply; Unavailable if nobody listens or nothing came within `timeout`."""
        if not self._resp_prefix:
            # One wildcard subscription serves every request (nats-py's "new style").
            self._resp_prefix = self.new_inbox() + "."
            await self.subscribe(self._resp_prefix + "*")
        token = os.urandom(8).hex()
        fut = asyncio.get_running_loop().create_future()
        self._resp_waiters[token] = (fut, subject)
        try:
            await self.publish(subject, payload, reply=self._resp_prefix + token)
            m = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError as e:
            raise Unavailable(f"no reply on {subject} within {timeout:g}s") from e
        finally:
            self._resp_waiters.pop(token, None)
        if m.status == NO_RESPONDERS:
            raise Unavailable(f"no service answers on {subject}")
        return m

    async def flush(self, timeout: float = 5.0) -> None:
        pong = asyncio.get_running_loop().create_future()
        self._pongs.append(pong)
        self._write(b"PING\r\n")
        try:
            await asyncio.wait_for(pong, timeout)
        except asyncio.TimeoutError as e:
            raise Unavailable(f"NATS did not answer a PING within {timeout:g}s") from e

    async def drain(self, timeout: float = 5.0) -> None:
        """Finish what subscriptions hold, make sure the server has everything sent, close."""
        if self._transport is None:
            return
        try:
            for sub in list(self._subs.values()):
                await sub.unsubscribe()
            if not self._closed:
                await self.flush(timeout)
        except DockyardError:
            pass  # closing anyway
        finally:
            await self.close()

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._closed = True


async def connect(url: str, name: str = "dockyard-cli", *, connect_timeout: float = 3.0,
                  creds: str = "", ca: str = "") -> LiteBusClient:
    """A connected LiteBusClient, authenticated by the `.creds` file `creds` unless the URL
    carries a user and password, verifying a TLS server against the CA file `ca`;
    NeedFullClient if `url` needs shared.bus."""
    from shared.credentials import read_creds
    return LiteBusClient(await Connection(name, read_creds(creds) if creds else None, ca).connect(
        url, connect_timeout))
