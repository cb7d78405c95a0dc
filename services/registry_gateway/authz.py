"""Authorization as a pluggable dependency of the gateway app.

The real authorizer is `services.registry_gateway.auth.open_auth`'s;
every route calls `authorize(request, repository, actions)` with the repository it acts on
(None for the catalog) and the actions it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

PULL, PUSH, DELETE = "pull", "push", "delete"
CATALOG_ACTIONS = frozenset({"*"})  # registry:catalog:*
# where an authorizer leaves the caller it let through, for the access log
PRINCIPAL_KEY = web.RequestKey("principal", object)


class Authorizer(Protocol):
    async def authorize(self, request: web.Request, repository: str | None,
                        actions: frozenset[str]) -> Any: ...


@dataclass(frozen=True)
class LocalPrincipal:
    name: str = "local"


class AllowAll:
    """Lets every request through: for a registry bound to loopback with auth turned off."""

    async def authorize(self, request: web.Request, repository: str | None,
                        actions: frozenset[str]) -> LocalPrincipal:
        return LocalPrincipal()
