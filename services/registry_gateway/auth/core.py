"""Who is asking, and may they: the registry's authorization decision.

A request carries a Bearer token (from the token endpoint or the bus), Basic
credentials (for simple clients), or nothing (anonymous: pull of public repositories
only). A refusal tells the client how to authenticate: 401 with a Bearer challenge
naming the scope it needs, or 403 DENIED when who it is may not do this at all.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from shared.errors import InvalidArgument, PermissionDenied, Unauthenticated

from .scopes import ALL_ACTIONS, CATALOG, PULL, Scope, challenge_actions
from .store import ADMIN, AuthStore
from .tokens import IssuedToken, TokenIssuer

ANONYMOUS = ""
SERVICE_ACCOUNT_PREFIX = "service:"


@dataclass(frozen=True)
class Principal:
    name: str  # "" for anonymous; "service:<account>" for bus service accounts
    via: str  # anonymous | basic | bearer | disabled
    admin: bool = False
    # A bearer token's access; None when the ACL decides (Basic, anonymous).
    token_access: dict[tuple[str, str], frozenset[str]] | None = field(default=None, compare=False)

    @property
    def anonymous(self) -> bool:
        return self.name == ANONYMOUS and self.via != "disabled"


def parse_basic(header: str) -> tuple[str, str]:
    """(user, password) of a `Basic` Authorization value."""
    try:
        raw = base64.b64decode(header.split(None, 1)[1].strip(), validate=True).decode()
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError) as e:
        raise Unauthenticated("malformed Basic credentials", detail_code="UNAUTHORIZED") from e
    user, sep, password = raw.partition(":")
    if not sep:
        raise Unauthenticated("malformed Basic credentials", detail_code="UNAUTHORIZED")
    return user, password


class Auth:
    """Authorization for the OCI API, the token endpoint and the bus verbs."""

    def __init__(self, store: AuthStore, issuer: TokenIssuer, *, enabled: bool = True,
                 token_ttl: int = 300, service_token_ttl: int = 3600, realm: str = ""):
        self.store = store
        self.issuer = issuer
        self.enabled = enabled
        self.token_ttl = token_ttl
        self.service_token_ttl = service_token_ttl
        self.realm = realm  # "" : derived from each request's own scheme and host

    # ---- decisions --------------------------------------------------------------------

    async def allowed_actions(self, principal: Principal, typ: str, name: str) -> frozenset[str]:
        """Every action `principal` may take on resource (typ, name)."""
        if principal.via == "disabled" or principal.admin:
            return ALL_ACTIONS | {"*"}
        if principal.token_access is not None:
            return principal.token_access.get((typ, name), frozenset())
        if typ != "repository":
            return frozenset()  # the catalog: admin only (it would list private names)
        acts: set[str] = set()
        if principal.name and not principal.name.startswith(SERVICE_ACCOUNT_PREFIX):
            acts |= await self.store.granted_actions(principal.name, name)
        if PULL not in acts and await self.store.is_public(name):
            acts.add(PULL)
        return frozenset(acts)

    async def grantable(self, principal: Principal, scope: Scope) -> Scope:
        """The scope narrowed to what `principal` may have: the token's access."""
        allowed = await self.allowed_actions(principal, scope.type, scope.name)
        if "*" in allowed:
            return scope
        return Scope(scope.type, scope.name, scope.actions & allowed)

    async def authenticate(self, authorization: str | None) -> Principal:
        """Who the Authorization header says; Unauthenticated if it lies."""
        if not self.enabled:
            return Principal(ANONYMOUS, "disabled", admin=True)
        if not authorization:
            return Principal(ANONYMOUS, "anonymous")
        kind = authorization.split(None, 1)[0].lower()
        if kind == "basic":
            user, password = parse_basic(authorization)
            if not await self.store.verify_password(user, password):
                raise Unauthenticated("invalid username or password", detail_code="UNAUTHORIZED")
            return Principal(user, "basic", admin=user == ADMIN)
        if kind == "bearer":
            parts = authorization.split(None, 1)
            claims = self.issuer.verify(parts[1].strip() if len(parts) > 1 else "")
            return Principal(claims.subject, "bearer", admin=False, token_access=claims.access)
        raise Unauthenticated(f"unsupported authorization scheme {kind!r}", detail_code="UNAUTHORIZED")

    def challenge(self, base_url: str, scope: Scope | None, error: str = "") -> str:
        realm = self.realm or f"{base_url.rstrip('/')}/token"
        parts = [f'realm="{realm}"', f'service="{self.issuer.service}"']
        if scope is not None:
            parts.append(f'scope="{scope.type}:{scope.name}:{challenge_actions(scope.actions) or "*"}"')
        if error:
            parts.append(f'error="{error}"')
        return "Bearer " + ",".join(parts)

    async def authorize(self, request, repository: str | None, actions: frozenset[str]) -> Principal:
        """The caller of an aiohttp request, if it may take `actions` on `repository`.

        `repository=None` with no actions is the `/v2/` base check (any authenticated
        caller); `repository=None` with actions is the catalog (admin only).
        """
        base_url = f"{request.scheme}://{request.host}"
        typ, name = ("repository", repository) if repository is not None else CATALOG
        wanted = Scope(typ, name, frozenset(actions) if repository is not None else frozenset({"*"}))
        need = wanted if (repository is not None or actions) else None
        try:
            principal = await self.authenticate(request.headers.get("Authorization"))
        except Unauthenticated as e:
            raise Unauthenticated(e.message, detail_code="UNAUTHORIZED",
                                  detail={"www_authenticate": self.challenge(base_url, need, "invalid_token")}) from e
        if principal.via == "disabled":
            return principal
        if need is None:
            if principal.anonymous:
                raise Unauthenticated("authentication required", detail_code="UNAUTHORIZED",
                                      detail={"www_authenticate": self.challenge(base_url, None)})
            return principal
        allowed = await self.allowed_actions(principal, typ, name)
        if "*" in allowed or wanted.actions <= allowed:
            return principal
        if principal.anonymous:
            raise Unauthenticated("authentication required", detail_code="UNAUTHORIZED",
                                  detail={"www_authenticate": self.challenge(base_url, need)})
        if principal.via == "bearer" and principal.name:
            # The token may just lack the scope (clients fetch scopes as they go): ask for
            # a new one if the user could have it, refuse outright if not.
            user = Principal(principal.name, "basic", admin=principal.name == ADMIN)
            if not principal.name.startswith(SERVICE_ACCOUNT_PREFIX):
                could = await self.allowed_actions(user, typ, name)
                if "*" not in could and not wanted.actions <= could:
                    raise PermissionDenied(f"{principal.name} may not {'/'.join(sorted(wanted.actions))} "
                                           f"{name}", detail_code="DENIED")
            raise Unauthenticated("token does not grant the access asked", detail_code="UNAUTHORIZED",
                                  detail={"www_authenticate": self.challenge(base_url, need, "insufficient_scope")})
        if principal.via == "bearer":  # an anonymous token: log in for more
            raise Unauthenticated("authentication required", detail_code="UNAUTHORIZED",
                                  detail={"www_authenticate": self.challenge(base_url, need, "insufficient_scope")})
        raise PermissionDenied(f"{principal.name} may not {'/'.join(sorted(wanted.actions))} {name}",
                               detail_code="DENIED")

    # ---- tokens -----------------------------------------------------------------------

    async def issue_token(self, principal: Principal, scopes: list[Scope], ttl: int | None = None) -> IssuedToken:
        """A token granting, per scope, the intersection of what was asked and what is allowed."""
        granted = [await self.grantable(principal, s) for s in scopes]
        return self.issuer.issue(principal.name, granted, ttl or self.token_ttl)

    def issue_service_token(self, account: str, scopes: list[Scope], ttl: int | None = None) -> IssuedToken:
        """A token for a trusted service account (the bus is trusted): access as asked."""
        if not account:
            raise InvalidArgument("a service account name is required")
        return self.issuer.issue(SERVICE_ACCOUNT_PREFIX + account, scopes, ttl or self.service_token_ttl)

    @property
    def service(self) -> str:
        return self.issuer.service

    # ---- wiring -----------------------------------------------------------------------

    def routes(self):
        """aiohttp RouteDefs of the token endpoint (`GET /token`)."""
        from .http import routes
        return routes(self)

    def register_bus(self, service) -> None:
        """Add the user, grant, visibility and service-token verbs to a BusService."""
        from .bus import register
        register(service, self)
