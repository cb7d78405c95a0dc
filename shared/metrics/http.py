"""The aiohttp middleware that counts and times every request by its route template."""

from __future__ import annotations

import time

from aiohttp import web

from shared.metrics.families import HTTP_BYTES_IN, HTTP_BYTES_OUT, HTTP_DURATION, HTTP_REQUESTS

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def route_of(request: web.Request) -> str:
    """The template of the route that matched (`/v2/{name}/blobs/{digest}`), never the path:
    paths carry repositories and digests, without bound."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or getattr(info, "http_exception", None) is not None:
        return UNMATCHED
    return resource.canonical


def _body_bytes(request: web.Request, resp: web.StreamResponse) -> int:
    """Body bytes of a reply: its Content-Length (a streamed reply that got here wrote all of
    it), else what the writer wrote, which counts the headers too."""
    if request.method == "HEAD":
        return 0
    if resp.content_length is not None:
        return resp.content_length
    return resp.body_length if resp.prepared else 0


@web.middleware
async def middleware(request: web.Request, handler):
    start = time.perf_counter()
    status, sent = 500, 0
    try:
        resp = await handler(request)
        # A streamed reply has been written by now; a plain one is written after we return.
        status = resp.status
        sent = _body_bytes(request, resp)
        return resp
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        count, duration, bytes_in, bytes_out = _series(route_of(request), request.method, status)
        count.inc()
        duration.observe(time.perf_counter() - start)
        received = getattr(request.content, "total_bytes", 0) or 0
        if received:
            bytes_in.inc(received)
        if sent:
            bytes_out.inc(sent)


_children: dict[tuple[str, str, int], tuple] = {}


def _series(route: str, method: str, status: int) -> tuple:
    """The four series of one (route, method, status), looked up once: a request pays for a
    dict lookup, not four label resolutions."""
    m = method if method in _METHODS else "OTHER"  # a client's own method names stay out of the key
    key = (route, m, status)
    got = _children.get(key)
    if got is None:
        got = _children[key] = (HTTP_REQUESTS.labels(route, m, str(status)), HTTP_DURATION.labels(route, m),
                                HTTP_BYTES_IN.labels(route, m), HTTP_BYTES_OUT.labels(route, m))
    return got
