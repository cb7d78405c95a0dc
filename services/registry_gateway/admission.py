"""The gateway's bounded admission (shared.admission) as the middleware of its listener.

It sits inside the access log (refusals are logged) and outside everything else: a refused
request costs no authentication, no KV read and no layer-store request. Authentication is
never skipped for an admitted one.
"""

from __future__ import annotations

from aiohttp import web

from shared.admission import Admission, refuse_unread_body
from shared.errors import Unavailable
from services.registry_gateway.errors import error_response


def middleware(admission: Admission):
    @web.middleware
    async def admit(request: web.Request, handler):
        try:
            await admission.enter(request)
        except Unavailable as e:
            return refuse_unread_body(request, error_response(e, head=request.method == "HEAD"))
        try:
            return await handler(request)
        finally:
            admission.release()
    return admit
