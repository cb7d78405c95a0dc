"""Short-lived registry tokens (JWT, ES256), signed by gateways and checked by anyone with the public key.

The claims follow distribution's token format: `access` is a list of
`{"type", "name", "actions"}`; `kid` in the header names the key (tokenkeys.py).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from shared.errors import Unauthenticated

from .scopes import Scope
from .tokenkeys import MAX_TOKEN_TTL, PublicKeys, Signer

ISSUER = "dockyard"
SERVICE = "dockyard"
ALGORITHM = "ES256"
LEEWAY = 5  # seconds of clock skew allowed on exp, nbf and iat


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


def _refuse(why: str) -> Unauthenticated:
    return Unauthenticated(why, detail_code="UNAUTHORIZED")


class TokenVerifier:
    """Checks tokens with public keys only: signature, algorithm, lifetime, audience, issuer."""

    def __init__(self, keys: PublicKeys, *, service: str = SERVICE, issuer: str = ISSUER):
        self._keys = keys
        self.service = service
        self.issuer = issuer

    def _public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        return self._keys.get(kid)

    def verify(self, token: str) -> Claims:
        """The token's claims; Unauthenticated if forged, expired or for another service."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as e:
            raise _refuse(f"malformed token: {e}") from e
        # Only ES256: "none" and HS256 (with the public key as its secret) are forgeries.
        if header.get("alg") != ALGORITHM:
            raise _refuse(f"token algorithm {header.get('alg')!r} is not {ALGORITHM}")
        key = self._public_key(str(header.get("kid", "")))
        if key is None:
            raise _refuse("token signed with an unknown key")
        try:
            data = jwt.decode(token, key, algorithms=[ALGORITHM], audience=self.service, issuer=self.issuer,
                              leeway=LEEWAY, options={"require": ["exp", "iat", "nbf", "sub", "aud", "iss"]})
        except jwt.ExpiredSignatureError as e:
            raise _refuse("token expired") from e
        except jwt.InvalidTokenError as e:
            raise _refuse(f"invalid token: {e}") from e
        try:
            iat, exp = float(data["iat"]), float(data["exp"])
        except (TypeError, ValueError) as e:
            raise _refuse("token has a malformed iat or exp") from e
        if iat > time.time() + LEEWAY:
            raise _refuse("token issued in the future")
        if exp - iat > MAX_TOKEN_TTL:
            raise _refuse("token lives longer than any this registry issues")
        return Claims(subject=str(data["sub"]), access=_access(data.get("access")), expires_at=exp)


def _access(entries) -> dict[tuple[str, str], frozenset[str]]:
    access: dict[tuple[str, str], frozenset[str]] = {}
    if not isinstance(entries, (list, type(None))):
        raise _refuse("token has a malformed access claim")
    for entry in entries or []:
        try:
            k = (str(entry["type"]), str(entry["name"]))
            access[k] = access.get(k, frozenset()) | frozenset(str(a) for a in entry["actions"])
        except (KeyError, TypeError) as e:
            raise _refuse("token has a malformed access claim") from e
    return access


class TokenIssuer(TokenVerifier):
    """Signs tokens with the gateways' private key, and verifies them as any verifier does."""

    def __init__(self, signer: Signer, keys: PublicKeys, *, service: str = SERVICE):
        super().__init__(keys, service=service)
        self._signer = signer

    def _public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        # Its own key first: a gateway accepts what it signs even while the .pub is being rewritten.
        key = self._signer.key
        return key.private_key.public_key() if kid == key.kid else super()._public_key(kid)

    def issue(self, subject: str, scopes: list[Scope], ttl: int) -> IssuedToken:
        """A token for `subject` with `scopes`, living `ttl` seconds (at most MAX_TOKEN_TTL)."""
        ttl = min(ttl, MAX_TOKEN_TTL)
        now = int(time.time())
        claims = {
            "iss": self.issuer, "aud": self.service, "sub": subject, "iat": now, "nbf": now - 1,
            "exp": now + ttl, "jti": uuid.uuid4().hex,
            "access": [{"type": s.type, "name": s.name, "actions": sorted(s.actions)}
                       for s in scopes if s.actions],
        }
        key = self._signer.key
        token = jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "JWT"})
        issued = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return IssuedToken(token=token, expires_in=ttl, issued_at=issued)
