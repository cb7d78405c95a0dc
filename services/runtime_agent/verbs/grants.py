"""Grants of the agent's copy plane: signed, expiring, single-use capabilities for one `cp`.

The agent signs one only in answer to a cp-from / cp-to request on the bus, whose subject
the NATS server has already checked the caller may publish (the operator role,
shared/permissions.py). The HMAC (shared.dataplane_sign) covers the method, the
container's path on the plane, every parameter of the copy and a random nonce, with a
key this agent process draws at start and never writes down: nothing else can issue a
grant it accepts, and a grant dies with the process. Each is good for GRANT_TTL seconds
and for one request.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from shared.dataplane_sign import KEY_BYTES, DataplaneSigner
from shared.errors import PermissionDenied

GRANT_TTL = 30.0  # the CLI uses its grant at once; a leaked one is soon worthless
_SIGNED = ("exp", "sig")


def archive_path(container: str) -> str:
    """Where the plane serves a container's files (docker's `/containers/{id}/archive`)."""
    return f"/v1/containers/{quote(container, safe='')}/archive"


@dataclass(frozen=True)
class Grant:
    method: str  # GET: a tar out of the container; PUT: a tar into it
    container: str
    params: dict[str, str]


class Grants:
    """Issues and redeems grants with this process's own key."""

    def __init__(self, key: bytes | None = None, ttl: float = GRANT_TTL):
        self._signer = DataplaneSigner(key or secrets.token_bytes(KEY_BYTES))
        self._ttl = ttl
        self._used: dict[str, int] = {}  # nonce -> expiry: a redeemed grant is refused again

    def issue(self, method: str, container: str, params: dict[str, str]) -> str:
        """The path and query that open `method` on `container` once, with `params`."""
        params = {**params, "nonce": secrets.token_hex(16)}
        path = archive_path(container)
        signed = self._signer.sign(method, path, _canonical(params), ttl=self._ttl)
        return f"{path}?{urlencode({**params, **signed})}"

    def redeem(self, method: str, container: str, path: str, query: dict[str, str]) -> Grant:
        """The grant `query` carries for `method path`; PermissionDenied unless this agent
        signed exactly it, it has not expired and it was not used before."""
        if "sig" not in query or "exp" not in query:
            raise PermissionDenied("the copy plane answers only grants the agent issued on the bus")
        if path != archive_path(container):
            raise PermissionDenied("the grant names another path")
        params = {k: v for k, v in query.items() if k not in _SIGNED}
        self._signer.verify(method, path, _canonical(params), query["exp"], query["sig"])
        now = time.time()
        self._used = {n: exp for n, exp in self._used.items() if exp >= now}
        nonce = params.get("nonce", "")
        if not nonce or nonce in self._used:
            raise PermissionDenied("the grant was used already")
        self._used[nonce] = int(query["exp"])
        params.pop("nonce")
        return Grant(method=method, container=container, params=params)


def _canonical(params: dict[str, str]) -> str:
    return urlencode(sorted(params.items()))
