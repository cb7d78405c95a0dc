"""A registry that reads every upload and keeps nothing: the floor of a skopeo push.

It answers just enough of the distribution API for `skopeo copy` to push (blob HEAD 404,
upload POST/PATCH/PUT, manifest PUT), reading bodies with large `readinto` calls and no
hashing or storing, so what a push to it costs is skopeo's own work plus the loopback.
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import unquote

_BUF = 1 << 20


def _read_body(f, headers: dict[str, str], buf: memoryview) -> None:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(f.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                f.readline()
                return
            _skip(f, size, buf)
            f.readline()
    _skip(f, int(headers.get("content-length", "0")), buf)


def _skip(f, n: int, buf: memoryview) -> None:
    while n:
        got = f.readinto(buf[:min(n, len(buf))])
        if not got:
            raise ConnectionError("body cut short")
        n -= got


def _serve_connection(conn: socket.socket) -> None:
    if conn.recv(1, socket.MSG_PEEK) == b"\x16":
        return  # a TLS ClientHello (skopeo tries https first): refuse it, it falls back to http
    f = conn.makefile("rb")
    buf = memoryview(bytearray(_BUF))
    while True:
        line = f.readline()
        if not line:
            return
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers = {}
        while (h := f.readline().decode("latin-1")) not in ("\r\n", ""):
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
        _read_body(f, headers, buf)
        status, extra = "200 OK", ""
        if method == "HEAD":
            status = "404 Not Found"
        elif method in ("POST", "PATCH"):
            status, extra = "202 Accepted", "Location: /v2/discard/uploads/x\r\nRange: 0-0\r\n"
        elif method == "PUT":
            status, extra = "201 Created", "Location: /v2/discard/x\r\n"
            if "digest=" in target:
                extra += f"Docker-Content-Digest: {unquote(target.split('digest=')[1].split('&')[0])}\r\n"
        conn.sendall(f"HTTP/1.1 {status}\r\n{extra}Docker-Distribution-API-Version: registry/2.0\r\n"
                     f"Content-Length: 0\r\n\r\n".encode())


def _handle(conn: socket.socket) -> None:
    try:
        _serve_connection(conn)
    except (OSError, ValueError, UnicodeDecodeError):
        pass  # a client that went away, or spoke something else: drop the connection
    finally:
        conn.close()


def start() -> tuple[socket.socket, str]:
    """Listen on a free loopback port; returns the socket (close it to stop) and HOST:PORT."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=_handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv, "127.0.0.1:%d" % srv.getsockname()[1]
