"""Serving the exposition: a `/metrics` route for a service's own HTTP listener, or a
listener of its own (`DOCKYARD_METRICS_ADDR`) for a service that speaks only on the bus.

Gauges that describe state (blobs stored, containers by state) are read when scraped:
a service registers an async hook with `on_scrape` that sets them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import REGISTRY, generate_latest

from shared.metrics import access

log = logging.getLogger("dockyard.metrics")

ADDR_ENV = "DOCKYARD_METRICS_ADDR"
PATH = "/metrics"
HOOK_TIMEOUT = 10.0
# The classic text format every Prometheus reads (our names need none of 1.0.0's escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_hooks: list[Callable[[], Awaitable[None]]] = []
_advertised: list[str] = []  # this process's own metrics listener, once it listens


def on_scrape(hook: Callable[[], Awaitable[None]]) -> None:
    """Run `hook` before every scrape (it sets gauges from the service's state)."""
    _hooks.append(hook)


def advertised_url() -> str:
    """The URL of this process's own metrics listener, or "" when it has none."""
    return _advertised[0] if _advertised else ""


def refused() -> web.Response:
    body = {"errors": [{"code": "DENIED", "message": "metrics are served to loopback clients or with "
                        f"the bearer token of {access.TOKEN_ENV}"}]}
    return web.Response(status=403, body=json.dumps(body).encode(), content_type="application/json")


async def _run_hooks() -> None:
    for hook in list(_hooks):
        try:
            await asyncio.wait_for(hook(), HOOK_TIMEOUT)
        except Exception:  # a stale gauge beats no metrics at all
            log.warning("metrics hook %s failed", getattr(hook, "__qualname__", hook), exc_info=True)


async def handle(request: web.Request) -> web.Response:
    """GET /metrics, for those `access.allowed` lets in."""
    if not access.allowed(request.remote, request.headers.get("Authorization")):
        log.info("refused metrics to %s", request.remote)
        return refused()
    await _run_hooks()
    resp = web.Response(body=generate_latest(REGISTRY))
    resp.headers["Content-Type"] = CONTENT_TYPE
    return resp


def add_route(app: web.Application) -> None:
    app.router.add_get(PATH, handle, allow_head=False)


def listen_addr(value: str | None) -> str:
    """The address a `DOCKYARD_METRICS_ADDR` value asks for, "" for off (unset, empty, `off`)."""
    value = (value or "").strip()
    return "" if value.lower() in ("", "off", "0", "no", "false") else value


async def serve_standalone(addr: str, data_dir: str, advertise_host: str = "") -> web.AppRunner:
    """A listener serving only /metrics on `addr` (port 0: any free port); its URL becomes
    `advertised_url()`, which the bus service puts in its `$SRV.INFO` metadata. Off loopback
    it speaks HTTPS with the node certificate in `data_dir`, as the registry does."""
    from shared import https_site, tls
    from shared.config import split_host_port
    from shared.errors import Unavailable
    host, port = split_host_port(addr)
    ssl_context = https_site.ssl_for(data_dir, host)
    app = web.Application()
    add_route(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await https_site.site(runner, https_site.listen_socket(host, port), ssl_context).start()
    except OSError as e:
        await runner.cleanup()
        raise Unavailable(f"metrics cannot listen on {addr}: {e.strerror or e}") from e
    bound = runner.addresses[0][1]
    shown = advertise_host or (host if host not in ("0.0.0.0", "::") else socket.gethostname())
    shown = f"[{shown}]" if ":" in shown else shown
    _advertised[:] = [f"{tls.http_scheme(host)}://{shown}:{bound}{PATH}"]
    log.info("metrics on %s", _advertised[0])
    return runner
