"""The NATS client protocol without I/O: URLs, the server's byte stream cut into ops, headers.

Both of the CLI's own clients speak it: `shared.bus_lite` over an asyncio connection, and
`shared.bus_blocking` over a plain socket for the commands that need no event loop.
Importing this module costs nothing beyond msgspec.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from shared.errors import InvalidArgument

if TYPE_CHECKING:
    from shared.credentials import UserCreds

CRLF = b"\r\n"
NO_RESPONDERS = 503
VERSION = "dockyard-lite-1"


class NeedFullClient(Exception):
    """The server or URL needs what this client lacks (TLS, websocket): use shared.bus."""


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


def connect_line(name: str, info: dict[str, Any], auth: dict[str, str], creds: "UserCreds | None") -> bytes:
    """CONNECT (URL credentials, else the user JWT and the server's nonce signed) and a PING."""
    opts = {"verbose": False, "pedantic": False, "lang": "python3", "version": VERSION,
            "protocol": 1, "headers": True, "no_responders": True, "name": name, **auth}
    if creds is not None and not auth:
        opts["jwt"] = creds.jwt
        opts["sig"] = creds.sign(info.get("nonce", "").encode())
    return b"CONNECT " + msgspec.json.encode(opts) + b"\r\nPING\r\n"


def publish_frame(subject: str, payload: bytes, reply: str, limit: int,
                  headers: dict[str, str] | None = None) -> bytes:
    """A PUB (an HPUB with `headers`), refused if over the server's max_payload (it would
    close the connection)."""
    if len(payload) > limit:
        raise InvalidArgument(f"message of {len(payload)} bytes is over the server's limit of {limit}")
    if headers:  # cp's stream chunks: raw bytes, their seq and end in headers
        hdr = ("NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
        sizes = f"{len(hdr)} {len(hdr) + len(payload)}"
        head = f"HPUB {subject} {reply} {sizes}\r\n" if reply else f"HPUB {subject} {sizes}\r\n"
        return head.encode() + hdr + payload + CRLF
    head = f"PUB {subject} {reply} {len(payload)}\r\n" if reply else f"PUB {subject} {len(payload)}\r\n"
    return head.encode() + payload + CRLF


def refused_publish(err: str) -> str:
    """The subject of a `-ERR 'Permissions Violation for Publish to "X"'`, else ''."""
    if not err.lower().startswith("permissions violation for publish to"):
        return ""
    return err.rsplit(" ", 1)[-1].strip('"')


class Msg:
    """A message either client read: what `respond` answers goes back on the connection it came on."""

    __slots__ = ("subject", "reply", "data", "headers", "status", "_conn")

    def __init__(self, conn: Any, subject: str, reply: str, data: bytes,
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


class Frames:
    """Cuts the server's bytes into ops: ("MSG", subject, sid, reply, payload, header length
    or -1) for MSG and HMSG, (OP, rest of the line) for the others."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pending: tuple | None = None  # (subject, sid, reply, header bytes, total bytes)

    def feed(self, data: bytes) -> Iterator[tuple]:
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
                yield ("MSG", subject, sid, reply, payload, hdr_len)
                continue
            end = buf.find(CRLF)
            if end < 0:
                return
            line = bytes(buf[:end])
            del buf[:end + 2]
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
            else:
                yield (op.decode(errors="replace"), rest)


def split_message(payload: bytes, hdr_len: int) -> tuple[dict[str, str] | None, int, bytes]:
    """(headers, status or 0, data) of a MSG/HMSG payload."""
    if hdr_len < 0:
        return None, 0, payload
    headers, status = parse_headers(payload[:hdr_len])
    return headers, status, payload[hdr_len:]


def parse_headers(raw: bytes) -> tuple[dict[str, str], int]:
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


def pending_of(ack_subject: str, fallback: int) -> int:
    """Messages still to come, from a JetStream delivery's `$JS.ACK...` reply subject."""
    t = ack_subject.split(".")
    if len(t) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(t[8])
    if len(t) >= 12:  # with domain and account hash
        return int(t[10])
    return fallback
