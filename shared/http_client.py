"""HTTP client sessions of dockyard's services and CLI: they verify TLS with the system's CAs
and the fleet CA (a registry or layer-store off loopback serves HTTPS with a node
certificate the fleet CA signed). There is no way here to turn verification off."""

from __future__ import annotations

from typing import Any

import aiohttp

from shared.tls import http_client_context


def connector(ca_file: str = "", **kw: Any) -> aiohttp.TCPConnector:
    """A connector verifying against the system's CAs and `ca_file` (the fleet CA), if any."""
    return aiohttp.TCPConnector(ssl=http_client_context(ca_file), **kw)


def session(ca_file: str = "", *, limit: int = 100, **kw: Any) -> aiohttp.ClientSession:
    """A ClientSession over `connector(ca_file)`; `kw` as for aiohttp.ClientSession."""
    return aiohttp.ClientSession(connector=connector(ca_file, limit=limit), **kw)
