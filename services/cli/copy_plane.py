"""`cp` over the agent's copy plane: a tar GET from, or PUT to, the grant URL the bus handed us.

Blocking (http.client, in a thread: it imports in a fraction of aiohttp's time). The
body of a PUT is chunked as tarfile writes it, CHUNK by CHUNK; a GET's is read as
extraction asks. A stream the agent broke off (its tar failed halfway) raises, so a
short tar never passes for a whole one. The agent's errors come back as their classes.
"""

from __future__ import annotations

import http.client
import json
import select
from collections.abc import Callable
from typing import BinaryIO
from urllib.parse import urlsplit

from shared.errors import DockyardError, Unavailable, from_code
from shared.tarcopy import CHUNK

_TIMEOUT = 60.0


def get(url: str, consume: Callable[[BinaryIO], object]):
    """GET the tar at `url` into `consume(file)`; its result."""
    conn, target = _connect(url)
    try:
        with _broken():
            conn.request("GET", target)
            resp = conn.getresponse()
            if resp.status != 200:
                raise _error(resp)
        return consume(_Body(resp))
    finally:
        conn.close()


def put(url: str, produce: Callable[[BinaryIO], object]) -> int:
    """PUT what `produce(file)` writes (a tar) to `url`; the bytes the agent wrote."""
    conn, target = _connect(url)
    try:
        with _broken():
            conn.putrequest("PUT", target, skip_accept_encoding=True)
            conn.putheader("Content-Type", "application/x-tar")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
        body = _ChunkedBody(conn.sock)
        try:
            produce(body)
            body.end()
        except _Answered:
            pass  # the agent answered (an error) before the body's end: its answer says why
        with _broken():
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise _error(resp, data)
            return int(json.loads(data).get("written", 0))
    finally:
        conn.close()


class _broken:
    """The socket's and HTTP's failures as Unavailable (ours, such as a bad path, pass)."""

    def __enter__(self):
        return self

    def __exit__(self, typ, e, tb) -> bool:
        if typ is not None and issubclass(typ, (http.client.HTTPException, OSError, ValueError)):
            raise Unavailable(f"the agent's copy stream broke off: {e!r}") from e
        return False


class _Body:
    """The response's body as a file; a broken stream raises Unavailable."""

    def __init__(self, resp: http.client.HTTPResponse):
        self.resp = resp

    def read(self, n: int = -1) -> bytes:
        with _broken():
            return self.resp.read(None if n < 0 else n)


def _connect(url: str) -> tuple[http.client.HTTPConnection, str]:
    u = urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise Unavailable(f"the agent handed a copy URL this CLI cannot use: {url}")
    return http.client.HTTPConnection(u.hostname, u.port, timeout=_TIMEOUT), f"{u.path}?{u.query}"


def _error(resp: http.client.HTTPResponse, data: bytes | None = None) -> DockyardError:
    data = resp.read() if data is None else data
    try:
        body = json.loads(data)
        return from_code(str(body["code"]), str(body["message"]))
    except (ValueError, KeyError, TypeError):
        return Unavailable(f"the agent's copy plane answered {resp.status} {resp.reason}")


class _Answered(Exception):
    """The agent answered while we were still sending."""


class _ChunkedBody:
    """A write-only file sending HTTP/1.1 chunks of CHUNK bytes at most (small writes gathered)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def write(self, b) -> int:
        n = len(b)
        if not self.buf and n >= CHUNK:
            self._send(b)  # tarfile's data blocks: sent as they are, not copied again
        else:
            self.buf += b
            if len(self.buf) >= CHUNK:
                self._send(self.buf)
                self.buf = bytearray()
        return n

    def flush(self) -> None:
        pass

    def end(self) -> None:
        if self.buf:
            self._send(self.buf)
            self.buf = bytearray()
        try:
            self.sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError) as e:
            raise _Answered() from e

    def _send(self, data) -> None:
        # an answer before the end is an error (a bad tar, a path refused): stop sending
        if select.select([self.sock], [], [], 0)[0]:
            raise _Answered()
        try:
            self.sock.sendall(b"%x\r\n" % len(data))
            self.sock.sendall(data)
            self.sock.sendall(b"\r\n")
        except (BrokenPipeError, ConnectionResetError) as e:
            raise _Answered() from e
