"""Who is asking, and may they: the registry's authorization decision.

A request carries a Bearer token (from the token endpoint or the bus), Basic
credentials (for simple clients), or nothing (anonymous: pull of public repositories
only). A refusal tells the client how to authenticate, as distribution does: 401 with a
Bearer challenge naming the scope it needs (`error="insufficient_scope"` when a valid token
lacks it, `invalid_token` when the credentials are bad), or 403 DENIED when a Basic user
may not do this at all. Every refusal is logged (audit.py).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from shared.errors import InvalidArgument, PermissionDenied, Unauthenticated, Unavailable
from services.registry_gateway.authz import PRINCIPAL_KEY
from services.registry_gateway.errors import TOO_MANY_REQUESTS

from . import audit
from .scopes import ALL_ACTIONS, CATALOG, PULL, Scope, challenge_actions
from .store import ADMIN, AuthStore
from .throttle import LoginThrottle
from .tokens import IssuedToken, TokenIssuer

ANONYMOUS = ""
SERVICE_ACCOUNT_PREFIX = "service:"
# distribution's messages for UNAUTHORIZED and DENIED; the reason goes to the log instead
AUTH_REQUIRED = "authentication required"
ACCESS_DENIED = "requested access to the resource is denied"


@dataclass(frozen=True)
class Principal:
    name: str  # "" for anonymous; "service:<account>" for bus service accounts
    via: str  # anonymous | basic | bearer | disabled
    admin: bool = False
    # A bearer token's access; None when the ACL decides (Basic, anonymous).
    token_access: dict[tuple[str, str], frozenset[str]] | None = field(default=None, compare=False)


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


def claimed_user(authorization: str | None) -> str:
    """The user name a Basic header claims, for the log (unverified, so marked as such)."""
    if authorization and authorization.split(None, 1)[0].lower() == "basic":
        try:
            return f"{parse_basic(authorization)[0]}(unverified)"
        except Unauthenticated:
            return "(malformed basic)"
    return "(invalid token)" if authorization else ""


class Auth:
    """Authorization for the OCI API, the token endpoint and the bus verbs."""

    def __init__(self, store: AuthStore, issuer: TokenIssuer, *, enabled: bool = True,
                 token_ttl: int = 300, service_token_ttl: int = 3600, realm: str = "",
                 throttle: LoginThrottle | None = None):
        self.store = store
        self.issuer = issuer
        self.throttle = throttle or LoginThrottle()
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

    async def authenticate(self, authorization: str | None, *, client: str = "") -> Principal:
        """Who the Authorization header says; Unauthenticated if it lies, Unavailable (429) while
        `client` or the user is throttled after failed logins."""
        if not self.enabled:
            return Principal(ANONYMOUS, "disabled", admin=True)
        if not authorization:
            return Principal(ANONYMOUS, "anonymous")
        kind = authorization.split(None, 1)[0].lower()
        if kind == "basic":
            user, password = parse_basic(authorization)
            wait = self.throttle.retry_after(user, client)
            if wait:
                raise Unavailable(f"too many failed logins: retry in {wait} s", detail_code=TOO_MANY_REQUESTS,
                                  detail={"retry_after": wait})
            if not await self.store.verify_password(user, password):
                blocked = self.throttle.failed(user, client)
                audit.log.info("login failed: user=%s from %s%s", user, client or "-",
                               f": throttled for {blocked} s" if blocked else "")
                raise Unauthenticated("invalid username or password", detail_code="UNAUTHORIZED")
            self.throttle.succeeded(user)
            return Principal(user, "basic", admin=user == ADMIN)
        if kind == "bearer":
            parts = authorization.split(None, 1)
            claims = self.issuer.verify(parts[1].strip() if len(parts) > 1 else "")
            return Principal(claims.subject, "bearer", admin=False, token_access=claims.access)
        raise Unauthenticated(f"unsupported authorization scheme {kind!r}", detail_code="UNAUTHORIZED")

    def challenge(self, base_url: str, scope: Scope | None, error: str = "") -> str:
        """A Bearer challenge, parameter for parameter as distribution writes it."""
        realm = self.realm or f"{base_url.rstrip('/')}/token"
        parts = [f'realm="{realm}"', f'service="{self.issuer.service}"']
        if scope is not None:
            parts.append(f'scope="{scope.type}:{scope.name}:{challenge_actions(scope.actions) or "*"}"')
        if error:
            parts.append(f'error="{error}"')
        return "Bearer " + ",".join(parts)

    def _challenge_error(self, request, who: str, scope: Scope | None, error: str, why: str) -> Unauthenticated:
        """distribution's 401: the challenge, and its body naming each access asked."""
        audit.refused(request, who, scope, 401, why)
        records = None if scope is None else [
            {"Type": scope.type, "Class": "", "Name": scope.name, "Action": a}
            for a in (challenge_actions(scope.actions) or "*").split(",")]
        return Unauthenticated(AUTH_REQUIRED, detail_code="UNAUTHORIZED",
                               detail={"www_authenticate": self.challenge(f"{request.scheme}://{request.host}",
                                                                          scope, error),
                                       "oci_detail": records})

    async def authorize(self, request, repository: str | None, actions: frozenset[str]) -> Principal:
        """The caller of an aiohttp request, if it may take `actions` on `repository`.

        `repository=None` with no actions is the `/v2/` base check (any authenticated
        caller); `repository=None` with actions is the catalog (admin only).
        """
        typ, name = ("repository", repository) if repository is not None else CATALOG
        wanted = Scope(typ, name, frozenset(actions) if repository is not None else frozenset({"*"}))
        need = wanted if (repository is not None or actions) else None
        header = request.headers.get("Authorization")
        try:
            principal = await self.authenticate(header, client=request.remote or "")
        except Unauthenticated as e:
            raise self._challenge_error(request, claimed_user(header), need, "invalid_token", e.message) from e
        except Unavailable as e:
            audit.refused(request, claimed_user(header), need, 429, e.message)
            raise
        if principal.via != "disabled" and not await self._allows(principal, wanted, need):
            if principal.via == "anonymous":
                # No credentials at all: the plain challenge, as distribution sends it.
                raise self._challenge_error(request, "", need, "", "authentication required")
            if principal.via == "bearer":
                # A valid token without the access: the client may ask for a token that has it.
                raise self._challenge_error(request, principal.name, need, "insufficient_scope",
                                            "the token does not grant the access asked")
            audit.refused(request, principal.name, need, 403, "no grant for the access asked")
            raise PermissionDenied(ACCESS_DENIED, detail_code="DENIED")
        request[PRINCIPAL_KEY] = principal
        return principal

    async def _allows(self, principal: Principal, wanted: Scope, need: Scope | None) -> bool:
        if need is None:  # the base check: anyone who authenticated
            return principal.via != "anonymous"
        allowed = await self.allowed_actions(principal, wanted.type, wanted.name)
        return "*" in allowed or wanted.actions <= allowed

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
