"""The gateway's access log, on demand (`DOCKYARD_ACCESS_LOG=1`): one INFO line per request.

The line names the caller the authorizer let through, never a credential; the query string
is left out because signed URLs carry their signature there.
"""

from __future__ import annotations

import logging
import os
import time

from aiohttp import web

from services.registry_gateway.authz import PRINCIPAL_KEY

log = logging.getLogger("dockyard.registry.access")


def middlewares() -> list:
    """The access-log middleware when `DOCKYARD_ACCESS_LOG` is on, else none."""
    on = os.environ.get("DOCKYARD_ACCESS_LOG", "").lower() in ("1", "true", "yes", "on")
    return [access_log] if on else []


@web.middleware
async def access_log(request: web.Request, handler):
    start = time.monotonic()
    status, size = 500, 0
    try:
        resp = await handler(request)
        # A streamed reply has been written by now; a plain one is written after we return.
        status, size = resp.status, resp.body_length if resp.prepared else (resp.content_length or 0)
        return resp
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        principal = request.get(PRINCIPAL_KEY)
        who = (getattr(principal, "name", "") or "anonymous") if principal is not None else "-"
        log.info('%s %s "%s %s" %s %s %.1fms', request.remote or "-", who, request.method, request.path,
                 status, size, (time.monotonic() - start) * 1000)
