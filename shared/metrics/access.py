"""Who may read `/metrics`: a loopback client, or one with `Authorization: Bearer
$DOCKYARD_METRICS_TOKEN`. Everyone else gets a 403 and nothing else."""

from __future__ import annotations

import hmac
import ipaddress
import os

TOKEN_ENV = "DOCKYARD_METRICS_TOKEN"


def is_loopback(remote: str | None) -> bool:
    if not remote:
        return False  # a socket without a peer address is no one we can identify
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def bearer_ok(authorization: str | None, token: str | None = None) -> bool:
    """True when the header carries the configured token (never when none is configured)."""
    token = os.environ.get(TOKEN_ENV, "") if token is None else token
    if not token or not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def allowed(remote: str | None, authorization: str | None) -> bool:
    return is_loopback(remote) or bearer_ok(authorization)
