"""Short-lived signed registry tokens (JWT), with a signing key every replica shares.

The first gateway to start creates the key in the `dockyard-acl` bucket (create is
compare-and-set, so racing replicas end up with the one key); any replica then
verifies any replica's tokens. The claims follow distribution's token format:
`access` is a list of `{"type", "name", "actions"}`.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import jwt
import msgspec

from shared.bus import TypedKV, kv_key
from shared.errors import AlreadyExists, Unauthenticated

from .scopes import Scope

ISSUER = "dockyard"
SERVICE = "dockyard"
ALGORITHM = "HS256"
_KEY_NAME = kv_key("signing-key")


class SigningKey(msgspec.Struct, kw_only=True):
    kid: str
    secret: str  # hex
    created_at: float


@dataclass(frozen=True)
class Claims:
    subject: str  # "" for anonymous
    access: dict[tuple[str, str], frozenset[str]]
    expires_at: float


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int
    issued_at: str  # RFC 3339


class TokenIssuer:
    def __init__(self, key: SigningKey, *, service: str = SERVICE):
        self._key = key
        self.service = service

    @classmethod
    async def open(cls, keys: TypedKV, *, service: str = SERVICE) -> "TokenIssuer":
        got = await keys.get(_KEY_NAME)
        if got is None:
            fresh = SigningKey(kid=uuid.uuid4().hex[:16], secret=secrets.token_hex(32), created_at=time.time())
            try:
                await keys.create(_KEY_NAME, fresh)
            except AlreadyExists:
                pass  # another replica won the race: use its key
            got = await keys.require(_KEY_NAME, "signing key")
        return cls(got[0], service=service)

    def issue(self, subject: str, scopes: list[Scope], ttl: int) -> IssuedToken:
        now = int(time.time())
        claims = {
            "iss": ISSUER, "aud": self.service, "sub": subject, "iat": now, "nbf": now - 1,
            "exp": now + ttl, "jti": uuid.uuid4().hex,
            "access": [{"type": s.type, "name": s.name, "actions": sorted(s.actions)}
                       for s in scopes if s.actions],
        }
        token = jwt.encode(claims, bytes.fromhex(self._key.secret), algorithm=ALGORITHM,
                           headers={"kid": self._key.kid})
        issued = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return IssuedToken(token=token, expires_in=ttl, issued_at=issued)

    def verify(self, token: str) -> Claims:
        """The token's claims; Unauthenticated if forged, expired or for another service."""
        try:
            header = jwt.get_unverified_header(token)
            if header.get("kid") != self._key.kid:
                raise Unauthenticated("token signed with an unknown key", detail_code="UNAUTHORIZED")
            data = jwt.decode(token, bytes.fromhex(self._key.secret), algorithms=[ALGORITHM],
                              audience=self.service, issuer=ISSUER, leeway=5,
                              options={"require": ["exp", "iat", "sub", "aud", "iss"]})
        except jwt.ExpiredSignatureError as e:
            raise Unauthenticated("token expired", detail_code="UNAUTHORIZED") from e
        except jwt.InvalidTokenError as e:
            raise Unauthenticated(f"invalid token: {e}", detail_code="UNAUTHORIZED") from e
        access: dict[tuple[str, str], frozenset[str]] = {}
        for entry in data.get("access") or []:
            try:
                k = (str(entry["type"]), str(entry["name"]))
                access[k] = access.get(k, frozenset()) | frozenset(str(a) for a in entry["actions"])
            except (KeyError, TypeError) as e:
                raise Unauthenticated("token has a malformed access claim", detail_code="UNAUTHORIZED") from e
        return Claims(subject=str(data["sub"]), access=access, expires_at=float(data["exp"]))
