"""One INFO line per refusal: who, from where, what, which scope, why; never a password or token."""

from __future__ import annotations

import logging

from aiohttp import web

log = logging.getLogger("dockyard.registry.auth")


def refused(request: web.Request, who: str, scope: object, status: int, why: str) -> None:
    """Log a refused request; `who` is a user name, `service:<account>`, or "" for anonymous."""
    log.info("refused %s %s %s from %s: user=%s scope=%s: %s", status, request.method, request.path,
             request.remote or "-", who or "anonymous", scope or "-", why)
