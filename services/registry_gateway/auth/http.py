"""The token endpoint of the Docker token flow (`GET /token?service=&scope=`)."""

from __future__ import annotations

import json

from aiohttp import web

from shared.errors import DockyardError, InvalidArgument, Unauthenticated
from services.registry_gateway.errors import error_response, status_and_code

from . import audit
from .core import Auth, claimed_user
from .scopes import parse_scopes


def routes(auth: Auth) -> web.RouteTableDef:
    table = web.RouteTableDef()

    @table.get("/token")
    async def token(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization")
        scopes = request.query.getall("scope", [])
        try:
            service = request.query.get("service", "")
            if service and service != auth.service:
                raise InvalidArgument(f"unknown service {service!r}; this registry is {auth.service!r}")
            asked = parse_scopes(scopes)
            principal = await auth.authenticate(header, client=request.remote or "")
            issued = await auth.issue_token(principal, asked)
        except DockyardError as e:
            status = status_and_code(e)[0]
            if status in (401, 429):
                audit.refused(request, claimed_user(header), " ".join(scopes), status, e.message)
            resp = error_response(e)
            if isinstance(e, Unauthenticated):
                resp.headers["WWW-Authenticate"] = 'Basic realm="dockyard"'  # the endpoint takes Basic
            return resp
        body = {"token": issued.token, "access_token": issued.token,
                "expires_in": issued.expires_in, "issued_at": issued.issued_at}
        return web.Response(body=json.dumps(body), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    return table
