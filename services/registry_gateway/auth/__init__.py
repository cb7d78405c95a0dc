"""Registry authentication and authorization: users, grants, visibility, tokens.

`auth = await open_auth(nc, cfg)`, then in the gateway: `await auth.authorize(request,
repository, frozenset({"pull"}))` per API request, `app.add_routes(auth.routes())`
for the token endpoint, `auth.register_bus(bus_service)` for the management verbs.
`DOCKYARD_AUTH=off` turns checks off (every caller may do everything).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import nats.js.errors
from nats.aio.client import Client as NATS

from shared import subjects
from shared.bus import kv_bucket, kv_key
from shared.config import Config

from . import bus, http
from .admin import ADMIN_PASSWORD_FILE, ensure_admin_in
from .core import Auth, Principal
from .scopes import Scope, parse_scopes
from .store import ADMIN, AuthStore
from .tokenkeys import PublicKeys, Signer
from .tokens import TokenIssuer

# Where tokens were signed with a shared HS256 secret, which every bus client could read.
_RETIRED_KV_SIGNING_KEY = kv_key("signing-key")


class GatewayAuth(Auth):
    """Auth with the gateway's two front doors: the token endpoint and the bus verbs."""

    def routes(self):
        """aiohttp RouteDefs of the token endpoint (`GET /token`)."""
        return http.routes(self)

    def register_bus(self, service) -> None:
        """Add the user, grant, visibility and service-token verbs to a BusService."""
        bus.register(service, self)


async def open_auth(nc: NATS, cfg: Config, *, users_bucket: str = subjects.KV_USERS,
                    acl_bucket: str = subjects.KV_ACL) -> GatewayAuth:
    """Open the auth state (creating the buckets, and the token key pair on first start)."""
    rounds = int(cfg.env("BCRYPT_ROUNDS", "12"))
    store = await AuthStore.open(nc, users_bucket=users_bucket, acl_bucket=acl_bucket, bcrypt_rounds=rounds)
    acl = await kv_bucket(nc, acl_bucket)
    with contextlib.suppress(nats.js.errors.KeyNotFoundError):
        await acl.get(_RETIRED_KV_SIGNING_KEY)
        await acl.purge(_RETIRED_KV_SIGNING_KEY)
    issuer = TokenIssuer(Signer(cfg.data_dir), PublicKeys(cfg.data_dir))
    return GatewayAuth(store, issuer,
                       enabled=cfg.env("AUTH", "on").lower() not in ("off", "false", "0", "no"),
                       token_ttl=int(cfg.env("TOKEN_TTL", "300")),
                       realm=cfg.env("AUTH_REALM", ""))


async def ensure_admin(nc: NATS, data_dir: str | os.PathLike, *, users_bucket: str = subjects.KV_USERS,
                       acl_bucket: str = subjects.KV_ACL) -> str | None:
    """Create user `admin` with a random password in DATA_DIR/admin-password (0600) if absent.

    Returns the new password, or None when `admin` already existed.
    """
    store = await AuthStore.open(nc, users_bucket=users_bucket, acl_bucket=acl_bucket,
                                 bcrypt_rounds=int(os.environ.get("DOCKYARD_BCRYPT_ROUNDS", "12")))
    return await ensure_admin_in(store, Path(data_dir) / ADMIN_PASSWORD_FILE)


__all__ = ["ADMIN", "ADMIN_PASSWORD_FILE", "Auth", "GatewayAuth", "Principal", "Scope", "ensure_admin",
           "open_auth", "parse_scopes"]
