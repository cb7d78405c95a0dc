"""Users (bcrypt hashes), grants and repository visibility in JetStream KV.

`dockyard-users` holds one record per user. `dockyard-acl` holds grants under
`grant.<user>.<pattern>` and visibility under `visibility.<pattern>` (the token signing
key is a file: tokenkeys.py). Every gateway replica reads the same buckets, so a grant made through
one replica holds on all of them at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict

import bcrypt
import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from shared import subjects
from shared.bus import TypedKV, kv_bucket, kv_key
from shared.errors import InvalidArgument, NotFound, Unavailable

from .scopes import GRANT_ACTIONS, candidate_patterns, parse_pattern, parse_username

ADMIN = "admin"
MAX_PASSWORD_BYTES = 72  # bcrypt ignores (bcrypt>=5: refuses) anything longer


class UserRecord(msgspec.Struct, kw_only=True):
    username: str
    password_hash: str
    created_at: float = 0.0
    role: str = ""  # on the bus: shared.permissions.ROLES, or "" for none


class GrantRecord(msgspec.Struct, kw_only=True):
    username: str
    pattern: str
    access: str  # pull | push


class VisibilityRecord(msgspec.Struct, kw_only=True):
    pattern: str
    public: bool


def _grant_key(username: str, pattern: str) -> str:
    return kv_key("grant", username, pattern)


def _visibility_key(pattern: str) -> str:
    return kv_key("visibility", pattern)


class AuthStore:
    """Users, grants and visibility, with a short cache of successful password checks."""

    def __init__(self, nc: NATS, acl_bucket: str, users: TypedKV, grants: TypedKV, visibility: TypedKV, *,
                 bcrypt_rounds: int = 12, verify_cache_seconds: float = 60.0):
        self._nc = nc
        self._acl_bucket = acl_bucket
        self.users = users
        self.grants = grants
        self.visibility = visibility
        self.bcrypt_rounds = bcrypt_rounds
        self._verify_ttl = verify_cache_seconds
        # sha256(user, password, stored hash) -> expiry. Keyed by the stored hash too, so a
        # password change or a removed user takes effect on the next request.
        self._verified: OrderedDict[bytes, float] = OrderedDict()
        self._checking: dict[bytes, asyncio.Future[bool]] = {}  # the same key: one bcrypt at a time

    @classmethod
    async def open(cls, nc: NATS, *, users_bucket: str = subjects.KV_USERS, acl_bucket: str = subjects.KV_ACL,
                   bcrypt_rounds: int = 12) -> "AuthStore":
        users_kv = await kv_bucket(nc, users_bucket, description="dockyard registry users")
        acl_kv = await kv_bucket(nc, acl_bucket, description="dockyard registry grants and visibility")
        return cls(nc, acl_bucket, TypedKV(users_kv, UserRecord), TypedKV(acl_kv, GrantRecord),
                   TypedKV(acl_kv, VisibilityRecord), bcrypt_rounds=bcrypt_rounds)

    # ---- users -----------------------------------------------------------------------

    def _hash(self, password: str) -> str:
        pw = password.encode()
        if not pw:
            raise InvalidArgument("the password must not be empty")
        if len(pw) > MAX_PASSWORD_BYTES:
            raise InvalidArgument(f"the password must be at most {MAX_PASSWORD_BYTES} bytes")
        return bcrypt.hashpw(pw, bcrypt.gensalt(self.bcrypt_rounds)).decode()

    async def add_user(self, username: str, password: str, *, update: bool = False,
                       role: str | None = None) -> UserRecord:
        """Add (or with `update` change) a user; `role` None keeps the bus role, and an update
        with an empty password changes the role only."""
        username = parse_username(username)
        hashed = await asyncio.to_thread(self._hash, password) if password or not update else ""
        if update:
            def change(old: UserRecord | None) -> UserRecord:
                if old is None and not hashed:
                    raise NotFound(f"no user {username}")
                return UserRecord(username=username, password_hash=hashed or old.password_hash,
                                  created_at=old.created_at if old else time.time(),
                                  role=(old.role if old else "") if role is None else role)
            return await self.users.mutate(kv_key(username), change)
        rec = UserRecord(username=username, password_hash=hashed, created_at=time.time(), role=role or "")
        await self.users.create(kv_key(username), rec)  # AlreadyExists if taken
        return rec

    async def remove_user(self, username: str) -> None:
        username = parse_username(username)
        if username == ADMIN:
            raise InvalidArgument("the admin user cannot be removed")
        await self.users.require(kv_key(username), "user")
        await self.users.delete(kv_key(username))
        for key in await self._acl_keys(kv_key("grant", username) + "."):
            if await self.grants.get(key) is not None:
                await self.grants.delete(key)

    async def list_users(self) -> list[UserRecord]:
        """Every user, by name (the web UI's users page)."""
        return [rec for _, rec, _ in await self.users.items()]

    async def get_user(self, username: str) -> UserRecord | None:
        try:
            username = parse_username(username)
        except InvalidArgument:
            return None
        got = await self.users.get(kv_key(username))
        return got[0] if got else None

    async def verify_password(self, username: str, password: str) -> bool:
        """True if the user exists and the password matches (bcrypt, cached briefly)."""
        rec = await self.get_user(username)
        if rec is None:
            return False
        key = hashlib.sha256(b"\0".join((username.encode(), password.encode(),
                                         rec.password_hash.encode()))).digest()
        now = time.monotonic()
        expiry = self._verified.get(key)
        if expiry is not None and expiry > now:
            return True
        pw = password.encode()
        if not pw or len(pw) > MAX_PASSWORD_BYTES:
            return False
        # bcrypt is slow on purpose: off the event loop, and once for concurrent checks of the
        # same password (fifty clients logging in at once cost one check, not fifty in a row
        # on the executor's few threads: seconds of waiting, measured under load).
        pending = self._checking.get(key)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(bcrypt.checkpw, pw, rec.password_hash.encode()))
            self._checking[key] = pending
            pending.add_done_callback(lambda _f: self._checking.pop(key, None))
        ok = await asyncio.shield(pending)
        if ok:
            self._verified[key] = now + self._verify_ttl
            self._verified.move_to_end(key)
            while len(self._verified) > 4096:
                self._verified.popitem(last=False)
        return ok

    # ---- grants and visibility ---------------------------------------------------------

    async def grant(self, username: str, pattern: str, access: str) -> GrantRecord | None:
        username, pattern = parse_username(username), parse_pattern(pattern)
        if await self.get_user(username) is None:
            raise NotFound(f"user {username!r} not found")
        if access == "none":
            if await self.grants.get(_grant_key(username, pattern)) is not None:
                await self.grants.delete(_grant_key(username, pattern))
            return None
        if access not in GRANT_ACTIONS:
            raise InvalidArgument(f"access must be pull, push or none, not {access!r}")
        rec = GrantRecord(username=username, pattern=pattern, access=access)
        await self.grants.put(_grant_key(username, pattern), rec)
        return rec

    async def grants_of(self, username: str) -> list[GrantRecord]:
        got = await asyncio.gather(*(self.grants.get(k)
                                     for k in await self._acl_keys(kv_key("grant", username) + ".")))
        return [g[0] for g in got if g is not None]

    async def _acl_keys(self, prefix: str) -> list[str]:
        """Keys under `prefix`, deleted ones included, in one server round trip.

        A KV watch can signal "no more keys" before delivered entries are processed
        (nats-py races its consumer-info check against the callback); stream info with
        a subject filter has no such window.
        """
        pre = f"$KV.{self._acl_bucket}."
        try:
            info = await self._nc.jetstream().stream_info(f"KV_{self._acl_bucket}", subjects_filter=pre + prefix + ">")
        except nats.errors.Error as e:
            raise Unavailable(f"cannot list {self._acl_bucket}: {e}") from e
        return sorted(s[len(pre):] for s in (info.state.subjects or {}))

    async def granted_actions(self, username: str, repository: str) -> frozenset[str]:
        """Actions the grants of `username` give on `repository` (every matching pattern counts)."""
        got = await asyncio.gather(*(self.grants.get(_grant_key(username, p))
                                     for p in candidate_patterns(repository)))
        acts: set[str] = set()
        for g in got:
            if g is not None:
                acts |= GRANT_ACTIONS.get(g[0].access, frozenset())
        return frozenset(acts)

    async def set_visibility(self, pattern: str, public: bool) -> VisibilityRecord:
        rec = VisibilityRecord(pattern=parse_pattern(pattern), public=public)
        await self.visibility.put(_visibility_key(rec.pattern), rec)
        return rec

    async def is_public(self, repository: str) -> bool:
        """The most specific visibility setting wins; repositories are private by default."""
        got = await asyncio.gather(*(self.visibility.get(_visibility_key(p))
                                     for p in candidate_patterns(repository)))
        for g in got:
            if g is not None:
                return g[0].public
        return False
