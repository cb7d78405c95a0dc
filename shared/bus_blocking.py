"""A NATS connection on a plain blocking socket, for CLI commands that need no event loop.

`dockyard ps` is a connect, a KV read and one scatter-gather; on our interpreter importing
asyncio (and the ssl, logging, concurrent.futures, subprocess it pulls in) costs more than
all of that traffic. This connection offers `shared.bus_lite.Connection`'s verbs as
coroutines, so `LiteBusClient` and the same command handlers run over either, but they
never suspend: `drive(coro)` runs such a coroutine to its end without a loop.

Security is bus_lite's: the same CONNECT (URL credentials, else the user JWT and the
server's nonce signed with its nkey), TLS when the server demands it, verified against
the fleet CA; without a CA, NeedFullClient (the caller moves to the full client).
Only read-only commands may use it: one that meets anything needing the loop is
abandoned (`NeedsEventLoop`) and run again on one.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from shared.bus_lite_client import LiteBusClient
from shared.errors import DockyardError, PermissionDenied, Unauthenticated, Unavailable
from shared.nats_wire import (NO_RESPONDERS, Frames, Msg, NeedFullClient, connect_line, parse_url, publish_frame,
                              refused_publish, split_message)

if TYPE_CHECKING:
    from shared.credentials import UserCreds

T = TypeVar("T")


class NeedsEventLoop(Exception):
    """What was driven without a loop awaited something only an event loop can give."""


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never suspends (its awaits are this module's verbs)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise NeedsEventLoop("the command awaited the event loop")


class Subscription:
    """The messages of one SUB, read from the socket as `next_msg` asks for them."""

    def __init__(self, conn: "Connection", sid: int, subject: str):
        self._conn = conn
        self.sid = sid
        self.subject = subject
        self.queue: deque[Msg] = deque()

    async def next_msg(self, timeout: float) -> Msg:
        """The next message; TimeoutError after `timeout` seconds (as asyncio's wait_for)."""
        self._conn._wait(lambda: bool(self.queue), time.monotonic() + timeout)
        return self.queue.popleft()

    async def unsubscribe(self) -> None:
        self._conn._unsubscribe(self)


class Connection:
    """One NATS client connection over a blocking socket."""

    def __init__(self, name: str = "dockyard-cli", creds: "UserCreds | None" = None, ca: str = ""):
        self.name = name
        self.creds = creds
        self.ca = ca
        # A principal may subscribe only under its own prefix (shared/permissions.py).
        self._inbox = (creds.inbox if creds is not None else "_INBOX") + "."
        self.info: dict[str, Any] = {}
        self._sock: socket.socket | None = None
        self._frames = Frames()
        self._subs: dict[int, Subscription] = {}
        self._next_sid = 1
        self._pongs_due = 0
        self._error = ""
        self._refused: set[str] = set()  # subjects the server refused us to publish to

    # ---- connecting ----------------------------------------------------------------

    async def connect(self, url: str, timeout: float = 3.0) -> "Connection":
        last: Exception | None = None
        for host, port, auth in parse_url(url):
            try:
                self._connect_one(host, port, auth, time.monotonic() + timeout)
                return self
            except NeedFullClient:
                raise
            except (OSError, Unavailable) as e:  # TimeoutError is an OSError
                last = e
                self._reset()
        if "authorization violation" in str(last).lower():
            raise Unauthenticated(f"NATS at {url.rpartition('@')[2]} refused the credentials: "
                                  "Authorization Violation") from last
        raise Unavailable(f"cannot reach NATS at {url}: {str(last) or 'timed out'}") from last

    def _connect_one(self, host: str, port: int, auth: dict[str, str], deadline: float) -> None:
        # An ASCII name as bytes: a str would load the idna codec for getaddrinfo (~1 ms).
        name: str | bytes = host.encode() if host.isascii() else host
        self._sock = socket.create_connection((name, port), timeout=max(0.001, deadline - time.monotonic()))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._wait(lambda: bool(self.info), deadline)
        if self.info.get("tls_required"):
            if not self.ca:
                self._reset()
                raise NeedFullClient("the server requires TLS")
            from shared import tls  # ssl costs an import only when a server demands it
            self._sock = tls.client_context(self.ca).wrap_socket(self._sock, server_hostname=host)
        self._write(connect_line(self.name, self.info, auth, self.creds))
        self._pongs_due += 1
        self._wait(lambda: self._pongs_due == 0, deadline)  # or the server's -ERR, as Unavailable

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self.info = {}
        self._frames = Frames()
        self._pongs_due = 0
        self._error = ""

    # ---- reading -------------------------------------------------------------------------

    def _wait(self, done: Callable[[], bool], deadline: float) -> None:
        """Read and handle the server's ops until `done()`; TimeoutError at `deadline`."""
        while not done():
            if self._sock is None:
                raise Unavailable(f"NATS: {self._error or 'connection closed'}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                raise  # an OSError too, but not a lost connection
            except OSError as e:
                data = b""
                self._error = self._error or str(e)
            if not data:
                self._sock.close()
                self._sock = None
                continue
            for op in self._frames.feed(data):
                self._handle(op)

    def _handle(self, op: tuple) -> None:
        if op[0] == "MSG":
            _, subject, sid, reply, payload, hdr_len = op
            sub = self._subs.get(sid)
            if sub is not None:
                headers, status, data = split_message(payload, hdr_len)
                sub.queue.append(Msg(self, subject, reply, data, headers, status))
        elif op[0] == "PING":
            self._write(b"PONG\r\n")
        elif op[0] == "PONG":
            self._pongs_due = max(0, self._pongs_due - 1)
        elif op[0] == "INFO":
            self.info = msgspec.json.decode(op[1])
        elif op[0] == "-ERR":
            self._error = op[1].decode(errors="replace").strip(" '")
            subject = refused_publish(self._error)
            if subject:  # the server stays connected; only that subject is refused
                self._refused.add(subject)
            # Every other -ERR that matters (authorization, parser) closes the connection.

    def _write(self, data: bytes) -> None:
        if self._sock is None:
            raise Unavailable(f"NATS: {self._error or 'connection closed'}")
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise Unavailable(f"NATS: {e}") from e

    # ---- verbs -------------------------------------------------------------------------

    def new_inbox(self) -> str:
        return self._inbox + os.urandom(12).hex()

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "") -> None:
        self._write(publish_frame(subject, payload, reply, self.info.get("max_payload", 1 << 20)))

    async def subscribe(self, subject: str, cb: Callable[[Msg], Any] | None = None) -> Subscription:
        if cb is not None:
            raise NeedsEventLoop(f"a callback on {subject} needs the event loop's client")
        sid = self._next_sid
        self._next_sid += 1
        sub = Subscription(self, sid, subject)
        self._subs[sid] = sub
        self._write(f"SUB {subject} {sid}\r\n".encode())
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if self._subs.pop(sub.sid, None) is not None and self._sock is not None:
            self._write(f"UNSUB {sub.sid}\r\n".encode())

    async def request(self, subject: str, payload: bytes = b"", timeout: float = 10.0) -> Msg:
        """The first reply; Unavailable if nobody listens or nothing came within `timeout`."""
        sub = await self.subscribe(self.new_inbox())
        self._refused.discard(subject)
        try:
            await self.publish(subject, payload, reply=sub.subject)
            self._wait(lambda: bool(sub.queue) or subject in self._refused, time.monotonic() + timeout)
        except TimeoutError as e:
            raise Unavailable(f"no reply on {subject} within {timeout:g}s") from e
        finally:
            self._unsubscribe(sub)
        if subject in self._refused:
            raise PermissionDenied(f"permission denied: publish to {subject}", detail=subject)
        m = sub.queue.popleft()
        if m.status == NO_RESPONDERS:
            raise Unavailable(f"no service answers on {subject}")
        return m

    async def flush(self, timeout: float = 5.0) -> None:
        self._write(b"PING\r\n")
        self._pongs_due += 1
        try:
            self._wait(lambda: self._pongs_due == 0, time.monotonic() + timeout)
        except TimeoutError as e:
            raise Unavailable(f"NATS did not answer a PING within {timeout:g}s") from e

    async def drain(self, timeout: float = 5.0) -> None:
        """Make sure the server has everything sent, close."""
        if self._sock is None:
            return
        try:
            for sub in list(self._subs.values()):
                self._unsubscribe(sub)
            await self.flush(timeout)
        except DockyardError:
            pass  # closing anyway
        finally:
            await self.close()

    async def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def connect(url: str, name: str = "dockyard-cli", *, connect_timeout: float = 3.0,
                  creds: str = "", ca: str = "") -> LiteBusClient:
    """shared.bus_lite.connect's client over a blocking connection (drive it with `drive`)."""
    from shared.credentials import read_creds
    return LiteBusClient(await Connection(name, read_creds(creds) if creds else None, ca).connect(
        url, connect_timeout))
