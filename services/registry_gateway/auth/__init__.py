"""Registry authentication and authorization: users, grants, visibility, tokens.

`auth = await open_auth(nc, cfg)`, then in the gateway: `await auth.authorize(request,
repository, frozenset({"pull"}))` per API request, `app.add_routes(auth.routes())`
for the token endpoint, `auth.register_bus(bus_service)` for the management verbs.
`DOCKYARD_AUTH=off` turns checks off (every caller may do everything).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from nats.aio.client import Client as NATS

from shared import subjects
from shared.bus import TypedKV, kv_bucket
from shared.config import Config
from shared.errors import AlreadyExists

from .core import Auth, Principal
from .scopes import Scope, parse_scopes
from .store import ADMIN, AuthStore
from .tokens import SigningKey, TokenIssuer

ADMIN_PASSWORD_FILE = "admin-password"


async def open_auth(nc: NATS, cfg: Config, *, users_bucket: str = subjects.KV_USERS,
                    acl_bucket: str = subjects.KV_ACL) -> Auth:
    """Open the auth state (creating buckets and the shared signing key on first start)."""
    rounds = int(cfg.env("BCRYPT_ROUNDS", "12"))
    store = await AuthStore.open(nc, users_bucket=users_bucket, acl_bucket=acl_bucket, bcrypt_rounds=rounds)
    issuer = await TokenIssuer.open(TypedKV(await kv_bucket(nc, acl_bucket), SigningKey))
    return Auth(store, issuer,
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


async def ensure_admin_in(store: AuthStore, path: Path) -> str | None:
    if await store.get_user(ADMIN) is not None:
        return None
    password = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The file first: a user whose password nobody can read would lock the admin out.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, password.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        await store.add_user(ADMIN, password, role="admin")  # the administrator on the bus too
    except AlreadyExists:
        os.unlink(tmp)  # created concurrently: that one's file stands
        return None
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)
    return password


__all__ = ["ADMIN", "ADMIN_PASSWORD_FILE", "Auth", "Principal", "Scope", "ensure_admin", "open_auth",
           "parse_scopes"]
