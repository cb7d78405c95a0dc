"""Answering a registry's 401: the Docker token flow (scoped tokens, cached) or Basic.

After the first challenge the client knows the scheme and realm and asks for a token
before each request whose scope it holds no live token for, so later requests do not
pay a 401 round trip each.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from shared.errors import DockyardError, InvalidArgument, PermissionDenied, Unauthenticated, Unavailable

from .credentials import CredentialStore, Credentials

# A token source for trusted services: scopes -> token (e.g. the gateway's REGISTRY_TOKEN verb).
TokenProvider = Callable[[list[str]], Awaitable[str]]

_PARAM_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
_EXPIRY_MARGIN = 10.0  # seconds: renew a token this long before it expires
_DEFAULT_TOKEN_SECONDS = 60  # the token spec's default when `expires_in` is absent


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: bearer | basic
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge:
    """The first challenge of a WWW-Authenticate header."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        raise InvalidArgument("empty WWW-Authenticate challenge")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace('\\"', '"')
              for m in _PARAM_RE.finditer(rest)}
    return Challenge(scheme.lower(), params)


def basic_header(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()


class RegistryAuth:
    """Authorization headers for one registry, per set of scopes."""

    def __init__(self, session: aiohttp.ClientSession, registry: str,
                 credentials: Credentials | CredentialStore | tuple[str, str] | None = None,
                 token_provider: TokenProvider | None = None):
        self._session = session
        self._registry = registry
        if isinstance(credentials, tuple):
            credentials = Credentials(*credentials)
        self._credentials = credentials
        self._token_provider = token_provider
        self._challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}

    def credentials(self) -> Credentials | None:
        c = self._credentials
        if isinstance(c, CredentialStore):
            return c.get(self._registry)
        return c

    async def header(self, scopes: list[str]) -> str | None:
        """The Authorization value to send, from what the registry asked for before."""
        ch = self._challenge
        if ch is None:
            return None
        if ch.scheme == "basic":
            creds = self.credentials()
            return basic_header(creds) if creds else None
        key = " ".join(sorted(scopes))
        cached = self._tokens.get(key)
        if cached and cached[1] > time.monotonic():
            return f"Bearer {cached[0]}"
        return f"Bearer {await self._fetch_token(scopes)}"

    async def on_challenge(self, header: str | None, scopes: list[str]) -> None:
        """Learn from a 401 how to authenticate; Unauthenticated if we cannot."""
        if not header:
            raise Unauthenticated(f"{self._registry} refused the request without a challenge",
                                  detail_code="UNAUTHORIZED")
        ch = parse_challenge(header)
        if ch.scheme not in ("bearer", "basic"):
            raise Unauthenticated(f"{self._registry} asks for unsupported auth scheme {ch.scheme!r}")
        if ch.scheme == "basic" and self.credentials() is None:
            raise Unauthenticated(f"{self._registry} requires a login", detail_code="UNAUTHORIZED")
        self._challenge = ch
        self._tokens.pop(" ".join(sorted(scopes)), None)

    def refusal(self, err: DockyardError, header: str | None) -> DockyardError:
        """`err` for a final 401, as docker reads it: a token that lacks the scope, fetched as
        someone (not anonymously), means that someone is denied, not that a login is missing."""
        if not (isinstance(err, Unauthenticated) and header):
            return err
        logged_in = self.credentials() is not None or self._token_provider is not None
        if logged_in and parse_challenge(header).params.get("error") == "insufficient_scope":
            return PermissionDenied(err.message, detail_code="DENIED")
        return err

    async def _fetch_token(self, scopes: list[str]) -> str:
        key = " ".join(sorted(scopes))
        if self._token_provider is not None:
            token, expires_in = await self._token_provider(scopes), _DEFAULT_TOKEN_SECONDS
        else:
            token, expires_in = await self._token_from_realm(scopes)
        self._tokens[key] = (token, time.monotonic() + max(expires_in - _EXPIRY_MARGIN, 1.0))
        return token

    async def _token_from_realm(self, scopes: list[str]) -> tuple[str, int]:
        assert self._challenge is not None
        realm = self._challenge.params.get("realm")
        if not realm:
            raise Unauthenticated(f"{self._registry}'s Bearer challenge names no realm")
        params = [("scope", s) for s in scopes]
        if self._challenge.params.get("service"):
            params.insert(0, ("service", self._challenge.params["service"]))
        headers = {}
        creds = self.credentials()
        if creds is not None:
            headers["Authorization"] = basic_header(creds)
        try:
            async with self._session.get(realm, params=params, headers=headers) as resp:
                if resp.status in (401, 403):
                    who = f"as {creds.username!r}" if creds else "anonymously"
                    raise Unauthenticated(f"{self._registry}: login {who} refused by {realm}",
                                          detail_code="UNAUTHORIZED")
                if resp.status == 429:
                    raise Unavailable(f"{self._registry}: too many failed logins, retry in "
                                      f"{resp.headers.get('Retry-After', 'a few')} s", detail_code="TOOMANYREQUESTS")
                if resp.status != 200:
                    raise Unavailable(f"token endpoint {realm} answered {resp.status}")
                body = await resp.json(content_type=None)
        except aiohttp.ClientError as e:
            raise Unavailable(f"cannot reach token endpoint {realm}: {e}") from e
        except ValueError as e:
            raise Unavailable(f"token endpoint {realm} sent malformed JSON") from e
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise Unavailable(f"token endpoint {realm} sent no token")
        expires_in = body.get("expires_in")
        return token, int(expires_in) if isinstance(expires_in, (int, float)) and expires_in > 0 \
            else _DEFAULT_TOKEN_SECONDS


def bus_token_provider(bus_client, account: str, *, expires_in: int = 0) -> TokenProvider:
    """Tokens from the gateway's REGISTRY_TOKEN verb, for trusted services (builder, agents)."""
    from shared import subjects
    from shared.messages.auth import TokenReply, TokenRequest

    async def provide(scopes: list[str]) -> str:
        reply = await bus_client.request(subjects.REGISTRY_TOKEN,
                                         TokenRequest(account=account, scopes=scopes, expires_in=expires_in),
                                         TokenReply)
        return reply.token

    return provide
