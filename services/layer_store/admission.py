"""Bounded admission (shared.admission) on the data plane's client-facing routes.

Registry clients reach the layer-store directly at `/v2/...` (blob redirects, direct
uploads); each such request holds a slot while it streams, and beyond the limit one is
refused as the registry refuses, 429 TOOMANYREQUESTS with Retry-After. The gateway's own
requests (`/blobs`, `/uploads`) are not counted here: the gateway's listener already
bounds them, and refusing them would turn one refusal into a gateway error.
It runs after the signature check, so an unsigned request is refused before it waits.

Its default limit is lower than the gateway's: a request here carries the bytes. A pull in
flight holds ~7 MiB (three 2 MiB read chunks), an upload ~1-2.5 MiB (two 1 MiB batches and
the read buffer), so 128 in flight bound the process at ~1 GiB even if all are pulls
(docs/registry.md, "Bounded admission"). DOCKYARD_MAX_INFLIGHT, when set, applies to both.
"""

from __future__ import annotations

from aiohttp import web

from services.layer_store.oci_uploads import API_HEADERS
from shared import codec
from shared.admission import TOO_MANY_REQUESTS, Admission, refuse_unread_body
from shared.errors import Unavailable

DEFAULT_MAX_INFLIGHT = 128


def too_many_response(e: Unavailable, *, head: bool) -> web.Response:
    headers = {**API_HEADERS, "Retry-After": str(e.detail["retry_after"])}
    if head:
        return web.Response(status=429, headers=headers)
    body = codec.encode({"errors": [{"code": TOO_MANY_REQUESTS, "message": e.message, "detail": None}]})
    return web.Response(status=429, body=body, content_type="application/json", headers=headers)


def middleware(admission: Admission):
    @web.middleware
    async def admit(request: web.Request, handler):
        if not request.path.startswith("/v2/"):
            return await handler(request)
        try:
            await admission.enter(request)
        except Unavailable as e:
            return refuse_unread_body(request, too_many_response(e, head=request.method == "HEAD"))
        try:
            return await handler(request)
        finally:
            admission.release()
    return admit
