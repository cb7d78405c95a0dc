"""A lean NATS client for the CLI: the `shared.bus.BusClient` interface without nats-py.

Every `dockyard` command is a new process, and importing nats-py (its JetStream
dataclasses, its transports) costs more than the command's whole bus traffic. This
module speaks the NATS client protocol (CONNECT, PING/PONG, SUB/UNSUB, PUB, MSG,
HMSG) over one asyncio connection and offers what CLI handlers use: `request`,
`request_with_progress`, `gather`, `publish`, `subscribe`, plus a one-round-trip
read of a KV bucket's live entries. `nats://` only, upgraded to TLS when the server
demands it and a CA is given; for `tls://`, websockets, or TLS without a CA,
`NeedFullClient` tells the caller to use `shared.bus`.
Services keep nats-py (reconnects, JetStream, micro).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from shared import codec
from shared.bus_reply import TypedEvents, decode_reply
from shared.errors import DockyardError, InvalidArgument, PermissionDenied, Unauthenticated, Unavailable

if TYPE_CHECKING:
    from shared.credentials import UserCreds

Rep = TypeVar("Rep")

_CRLF = b"\r\n"
_NO_RESPONDERS = 503
_VERSION = "dockyard-lite-1"


class NeedFullClient(Exception):
    """The server or URL needs what this client lacks (TLS, websocket): use shared.bus."""


class Msg:
    __slots__ = ("subject", "reply", "data", "headers", "status", "_conn")

    def __init__(self, conn: "Connection", subject: str, reply: str, data: bytes,
                 headers: dict[str, str] | None, status: int):
        self._conn = conn
        self.subject = subject
        self.reply = reply
        self.data = data
        self.headers = headers
        self.status = status

    async def respond(self, data: bytes) -> None:
        if self.reply:
            await self._conn.publish(self.reply, data)


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


def parse_url(url: str) -> list[tuple[str, int, dict[str, str]]]:
    """(host, port, auth fields of CONNECT) for each server of a `nats://` URL list."""
    # By hand: urllib.parse costs an import (~1.5 ms) on every command.
    out = []
    for one in url.split(","):
        scheme, sep, rest = one.strip().partition("://")
        if not sep:
            scheme, rest = "nats", one.strip()
        if scheme != "nats":
            raise NeedFullClient(f"{scheme}:// needs the full client")
        userinfo, at, hostport = rest.split("/", 1)[0].rpartition("@")
        auth: dict[str, str] = {}
        if at:
            user, colon, password = userinfo.partition(":")
            auth = ({"user": _unquote(user), "pass": _unquote(password)} if colon
                    else {"auth_token": _unquote(user)})
        if hostport.startswith("["):  # [IPv6]:port
            host, _, port = hostport[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = hostport.partition(":")
        try:
            out.append((host or "127.0.0.1", int(port) if port else 4222, auth))
        except ValueError:
            raise InvalidArgument(f"invalid NATS URL {one!r}") from None
    return out


def _unquote(text: str) -> str:
    """Percent-decoding of URL credentials (`p%40ss` -> `p@ss`)."""
    if "%" not in text:
        return text
    parts = text.split("%")
    out = bytearray(parts[0].encode())
    for p in parts[1:]:
        try:
            out += bytes([int(p[:2], 16)]) + p[2:].encode()
        except ValueError:
            out += ("%" + p).encode()
    return out.decode(errors="replace")


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
        self._buf = bytearray()
        self._pending: tuple | None = None  # (subject, sid, reply, header bytes, total bytes)
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
        opts = {"verbose": False, "pedantic": False, "lang": "python3", "version": _VERSION,
                "protocol": 1, "headers": True, "no_responders": True, "name": self.name, **auth}
        if self.creds is not None and not auth:
            opts["jwt"] = self.creds.jwt
            opts["sig"] = self.creds.sign(self.info.get("nonce", "").encode())
        self._write(b"CONNECT " + msgspec.json.encode(opts) + b"\r\nPING\r\n")
        pong = loop.create_future()
        self._pongs.append(pong)
        await pong  # or the server's -ERR (authorization violation), as Unavailable

    def _reset(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = None
        self._buf.clear()
        self._pending = None
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
        buf = self._buf
        buf += data
        while True:
            if self._pending is not None:
                subject, sid, reply, hdr_len, total = self._pending
                if len(buf) < total + 2:
                    return
                payload = bytes(buf[:total])
                del buf[:total + 2]
                self._pending = None
                self._dispatch(subject, sid, reply, payload, hdr_len)
                continue
            end = buf.find(_CRLF)
            if end < 0:
                return
            line = bytes(buf[:end])
            del buf[:end + 2]
            self._control(line)

    def _control(self, line: bytes) -> None:
        op, _, rest = line.partition(b" ")
        op = op.upper()
        if op == b"MSG":
            a = rest.split()
            reply = a[2].decode() if len(a) == 4 else ""
            self._pending = (a[0].decode(), int(a[1]), reply, -1, int(a[-1]))
        elif op == b"HMSG":
            a = rest.split()
            reply = a[2].decode() if len(a) == 5 else ""
            self._pending = (a[0].decode(), int(a[1]), reply, int(a[-2]), int(a[-1]))
        elif op == b"PING":
            self._write(b"PONG\r\n")
        elif op == b"PONG":
            if self._pongs:
                f = self._pongs.popleft()
                if not f.done():
                    f.set_result(None)
        elif op == b"INFO":
            self.info = msgspec.json.decode(rest)
            if self._info_seen is not None and not self._info_seen.done():
                self._info_seen.set_result(None)
        elif op == b"-ERR":
            self._error = rest.decode(errors="replace").strip(" '")
            if self._error.lower().startswith("permissions violation for publish to"):
                # The server stays connected; only the requests to that subject are refused.
                subject = self._error.rsplit(" ", 1)[-1].strip('"')
                for f, s in list(self._resp_waiters.values()):
                    if s == subject and not f.done():
                        f.set_exception(PermissionDenied(f"permission denied: publish to {subject}",
                                                         detail=subject))
            # The server closes the connection after every -ERR that matters to us
            # (authorization, parser); connection_lost reports it to the waiters.

    def _dispatch(self, subject: str, sid: int, reply: str, payload: bytes, hdr_len: int) -> None:
        headers, status, data = None, 0, payload
        if hdr_len >= 0:
            headers, status = _parse_headers(payload[:hdr_len])
            data = payload[hdr_len:]
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
        limit = self.info.get("max_payload", 1 << 20)
        if len(payload) > limit:
            raise InvalidArgument(f"message of {len(payload)} bytes is over the server's limit of {limit}")
        if headers:  # HPUB (cp's stream chunks: raw bytes, their seq and end in headers)
            hdr = ("NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
            sizes = f"{len(hdr)} {len(hdr) + len(payload)}"
            head = f"HPUB {subject} {reply} {sizes}\r\n" if reply else f"HPUB {subject} {sizes}\r\n"
            self._write(head.encode() + hdr)
            self._write(payload)  # as it is: a 512 KiB chunk is not copied into one buffer first
            self._write(_CRLF)
            return
        head = f"PUB {subject} {reply} {len(payload)}\r\n" if reply else f"PUB {subject} {len(payload)}\r\n"
        self._write(head.encode() + payload + _CRLF)

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
        if m.status == _NO_RESPONDERS:
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


def _parse_headers(raw: bytes) -> tuple[dict[str, str], int]:
    """`NATS/1.0[ status[ text]]` then `Key: Value` lines: (headers, status or 0)."""
    lines = raw.decode(errors="replace").split("\r\n")
    first = lines[0].split(" ", 2)
    status = int(first[1]) if len(first) > 1 and first[1].isdigit() else 0
    headers = {}
    for ln in lines[1:]:
        k, sep, v = ln.partition(":")
        if sep:
            headers[k.strip()] = v.strip()
    return headers, status


class LiteBusClient(TypedEvents):
    """`shared.bus.BusClient`'s interface over a `Connection` (`.nc`, like nats-py's client)."""

    def __init__(self, nc: Connection):
        self.nc = nc

    async def request(self, subject: str, msg: msgspec.Struct, reply_type: type[Rep], *,
                      timeout: float = 10.0) -> Rep:
        resp = await self.nc.request(subject, codec.encode(msg), timeout=timeout)
        return decode_reply(resp, reply_type)

    async def gather(self, subject: str, msg: msgspec.Struct | None, reply_type: type[Rep], *,
                     timeout: float = 0.5, expect: int | None = None) -> list[Rep]:
        """Scatter-gather: every responder's reply within `timeout` (or once `expect` came)."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        replies: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await self.nc.publish(subject, codec.encode(msg) if msg is not None else b"", reply=inbox)
            while expect is None or len(replies) < expect:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    m = await sub.next_msg(left)
                except asyncio.TimeoutError:
                    break
                if m.status == _NO_RESPONDERS:
                    break  # nobody at all listens
                try:
                    replies.append(decode_reply(m, reply_type))
                except DockyardError:
                    pass  # one responder's error does not spoil the others' answers
        finally:
            await sub.unsubscribe()
        return replies

    async def kv_entries(self, bucket: str, *, timeout: float = 2.0) -> list[tuple[str, bytes]]:
        """The live (key, value) pairs of a JetStream KV bucket; [] if it does not exist.

        One ephemeral push consumer delivering the last message per key: a round trip,
        where nats-py's keys()+get() costs one per key plus a stream info.
        """
        stream, prefix = f"KV_{bucket}", f"$KV.{bucket}."
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        name = ""
        config = {"deliver_subject": inbox, "deliver_policy": "last_per_subject", "ack_policy": "none",
                  "filter_subject": prefix + ">", "replay_policy": "instant", "mem_storage": True,
                  "num_replicas": 1, "inactive_threshold": 5_000_000_000}
        try:
            resp = await self.nc.request(f"$JS.API.CONSUMER.CREATE.{stream}",
                                         msgspec.json.encode({"stream_name": stream, "config": config}),
                                         timeout=timeout)
            info = msgspec.json.decode(resp.data)
            if "error" in info:
                if info["error"].get("err_code") == 10059:  # stream not found: no bucket yet
                    return []
                raise Unavailable(f"KV {bucket}: {info['error'].get('description', info['error'])}")
            name = info.get("name", "")
            entries: dict[str, bytes] = {}
            left = info.get("num_pending", 0)
            while left > 0:
                try:
                    m = await sub.next_msg(timeout)
                except asyncio.TimeoutError as e:
                    raise Unavailable(f"KV {bucket}: the listing did not end") from e
                key = m.subject[len(prefix):]
                if (m.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                    entries.pop(key, None)
                else:
                    entries[key] = m.data
                left = _pending_of(m.reply, left - 1)
        finally:
            await sub.unsubscribe()
            # Done with the consumer, however the listing ended; the server would drop it
            # after inactive_threshold anyway, this only saves it the wait.
            if name:
                await self.nc.publish(f"$JS.API.CONSUMER.DELETE.{stream}.{name}", b"",
                                      reply=self.nc.new_inbox())
        return sorted(entries.items())

    async def close(self) -> None:
        await self.nc.drain()


def _pending_of(ack_subject: str, fallback: int) -> int:
    """Messages still to come, from a JetStream delivery's `$JS.ACK...` reply subject."""
    t = ack_subject.split(".")
    if len(t) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(t[8])
    if len(t) >= 12:  # with domain and account hash
        return int(t[10])
    return fallback


async def connect(url: str, name: str = "dockyard-cli", *, connect_timeout: float = 3.0,
                  creds: str = "", ca: str = "") -> LiteBusClient:
    """A connected LiteBusClient, authenticated by the `.creds` file `creds` unless the URL
    carries a user and password, verifying a TLS server against the CA file `ca`;
    NeedFullClient if `url` needs shared.bus."""
    from shared.credentials import read_creds
    return LiteBusClient(await Connection(name, read_creds(creds) if creds else None, ca).connect(
        url, connect_timeout))
