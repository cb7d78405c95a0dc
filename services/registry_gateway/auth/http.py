"""The token endpoint of the Docker token flow (`GET /token?service=&scope=`)."""

from __future__ import annotations

import json

from aiohttp import web

from shared.errors import DockyardError, InvalidArgument, Unauthenticated

from .core import Auth
from .scopes import parse_scopes


def _error(e: DockyardError) -> web.Response:
    headers = {}
    if isinstance(e, Unauthenticated):
        # The token endpoint itself takes Basic credentials.
        headers["WWW-Authenticate"] = 'Basic realm="dockyard"'
    body = {"errors": [{"code": e.detail_code or e.code, "message": e.message, "detail": None}]}
    return web.json_response(body, status=e.http_status, headers=headers)


def routes(auth: Auth) -> web.RouteTableDef:
    table = web.RouteTableDef()

    @table.get("/token")
    async def token(request: web.Request) -> web.Response:
        try:
            service = request.query.get("service", "")
            if service and service != auth.service:
                raise InvalidArgument(f"unknown service {service!r}; this registry is {auth.service!r}")
            scopes = parse_scopes(request.query.getall("scope", []))
            principal = await auth.authenticate(request.headers.get("Authorization"))
            issued = await auth.issue_token(principal, scopes)
        except DockyardError as e:
            return _error(e)
        body = {"token": issued.token, "access_token": issued.token,
                "expires_in": issued.expires_in, "issued_at": issued.issued_at}
        return web.Response(body=json.dumps(body), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    return table
