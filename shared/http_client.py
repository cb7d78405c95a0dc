"""HTTP client sessions of dockyard's services and CLI: they verify TLS with the system's CAs
and the fleet CA (a registry or layer-store off loopback serves HTTPS with a node
certificate the fleet CA signed). There is no way here to turn verification off."""

from __future__ import annotations

import functools
import os
import ssl
from typing import Any

import aiohttp

from shared.tls import http_client_context


def connector(ca_file: str = "", **kw: Any) -> aiohttp.TCPConnector:
    """A connector verifying against the system's CAs and `ca_file` (the fleet CA), if any;
    without one, aiohttp's own verifying context (made once at its import)."""
    return aiohttp.TCPConnector(ssl=_context(ca_file) if ca_file else True, **kw)


def session(ca_file: str = "", *, limit: int = 100, **kw: Any) -> aiohttp.ClientSession:
    """A ClientSession over `connector(ca_file)`; `kw` as for aiohttp.ClientSession."""
    return aiohttp.ClientSession(connector=connector(ca_file, limit=limit), **kw)


def _context(ca_file: str) -> ssl.SSLContext:
    """One context per CA file and version of it: loading the system's CAs takes tens of ms,
    and the gateway opens a session per copy."""
    try:
        mtime = os.stat(ca_file).st_mtime_ns
    except OSError:
        mtime = 0  # http_client_context says what is wrong with it
    return _cached_context(ca_file, mtime)


@functools.lru_cache(maxsize=8)
def _cached_context(ca_file: str, mtime: int) -> ssl.SSLContext:
    return http_client_context(ca_file)
