"""The aiohttp site of the registry-gateway and the layer-store data plane.

    sock = listen_socket(host, port)
    site = https_site.site(runner, sock, https_site.ssl_for(cfg, host))   # None: plain HTTP
    await site.start()

Off loopback the site speaks HTTPS with this node's certificate (shared.tls); on loopback
it stays plain HTTP (DOCKYARD_HTTP_TLS changes that). A client that sends plain HTTP to
an HTTPS port gets a readable 400 naming the problem, not a reset or a hang: each new
connection's first byte is peeked at, and only a TLS handshake goes on to TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from pathlib import Path

from aiohttp import web

from shared import tls

log = logging.getLogger("dockyard.https")

TLS_HANDSHAKE = 0x16  # the first byte of every TLS record that opens a connection
# A connection that says nothing (or never finishes its handshake) is dropped after this.
FIRST_BYTES_TIMEOUT = 30.0
# How long a plain-HTTP request head is read for before it is answered.
PLAIN_HEAD_TIMEOUT = 2.0
PLAIN_REFUSAL_TEXT = ("400 Bad Request: this port speaks HTTPS, and a plain HTTP request was sent to it. "
                      "Use https:// and trust the fleet CA (DATA_DIR/credentials/ca.pem); see docs/fleet.md.\n")
PLAIN_REFUSAL = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(PLAIN_REFUSAL_TEXT), PLAIN_REFUSAL_TEXT.encode()))


def listen_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one); OSError if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


def ssl_for(data_dir: str | Path, host: str) -> ssl.SSLContext | None:
    """The server context a listener on `host` needs: None for plain HTTP (see tls.serves_https)."""
    if not tls.serves_https(host):
        return None
    return tls.server_context(Path(data_dir) / "credentials")


def site(runner: web.BaseRunner, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> web.BaseSite:
    """The site serving `runner` on `sock`: HTTPS when `ssl_context` is given, else plain."""
    if ssl_context is None:
        return web.SockSite(runner, sock)
    return HttpsSite(runner, sock, ssl_context)


class _Listener:
    """What BaseSite.stop and AppRunner.addresses ask of a site's `_server`."""

    def __init__(self, sock: socket.socket, task: asyncio.Task):
        self.sockets = [sock]
        self._task = task

    def close(self) -> None:
        self._task.cancel()
        for s in self.sockets:
            s.close()


class HttpsSite(web.BaseSite):
    """HTTPS on an already bound socket; a plain-HTTP request is answered 400 in plain HTTP."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, ssl_context: ssl.SSLContext):
        super().__init__(runner, ssl_context=ssl_context)
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self._name = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        self._pending: set[asyncio.Task] = set()

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        self._sock.setblocking(False)
        self._server = _Listener(self._sock, asyncio.ensure_future(self._accept()))  # type: ignore[assignment]

    async def stop(self) -> None:
        await super().stop()
        for t in list(self._pending):
            t.cancel()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as e:  # out of file descriptors, or the like: the listener stays
                log.warning("accept failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = asyncio.ensure_future(self._route(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _route(self, conn: socket.socket) -> None:
        """TLS to the app, anything else to the 400; a silent connection is closed."""
        loop = asyncio.get_running_loop()
        try:
            first = await asyncio.wait_for(_peek(loop, conn), FIRST_BYTES_TIMEOUT)
        except (OSError, TimeoutError):
            conn.close()
            return
        if not first:
            conn.close()
        elif first[0] == TLS_HANDSHAKE:
            server = self._runner.server
            assert server is not None
            try:
                await loop.connect_accepted_socket(server, conn, ssl=self._ssl_context,
                                                   ssl_handshake_timeout=FIRST_BYTES_TIMEOUT)
            except (OSError, ssl.SSLError, TimeoutError) as e:  # a client that does not trust us, mostly
                log.debug("TLS handshake failed: %s", e)
                conn.close()
        else:
            await _refuse_plain(loop, conn)


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    """The connection's first byte, left in the socket for whoever reads it next."""
    while True:
        try:
            return conn.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            readable = loop.create_future()
            loop.add_reader(conn.fileno(), lambda: readable.done() or readable.set_result(None))
            try:
                await readable
            finally:
                loop.remove_reader(conn.fileno())


async def _refuse_plain(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    """Read the request head (a close with unread bytes would reset the connection before the
    client saw the answer), answer 400, close."""
    try:
        head = b""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PLAIN_HEAD_TIMEOUT):
                while b"\r\n\r\n" not in head and len(head) < 64 << 10:
                    chunk = await loop.sock_recv(conn, 16 << 10)
                    if not chunk:
                        break
                    head += chunk
        await loop.sock_sendall(conn, PLAIN_REFUSAL)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the client went away: nothing to tell it
    finally:
        conn.close()
