"""Users, grants, visibility and tokens against a real JetStream KV."""

from __future__ import annotations

import os
import stat
import time

import nats.js.errors
import pytest

from services.registry_gateway.auth import ensure_admin, open_auth, parse_scopes
from services.registry_gateway.auth.core import Principal
from services.registry_gateway.auth.scopes import Scope, candidate_patterns
from services.registry_gateway.auth.store import AuthStore
from shared.bus import kv_bucket
from shared.config import Config
from shared.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated


def test_parse_scopes_merges_and_keeps_colons_in_names():
    got = parse_scopes(["repository:a/b:pull", "repository:a/b:push repository:localhost:5000/x:*",
                        "registry:catalog:*"])
    by = {(s.type, s.name): s.actions for s in got}
    assert by[("repository", "a/b")] == {"pull", "push"}
    assert by[("repository", "localhost:5000/x")] == {"pull", "push", "delete"}
    assert by[("registry", "catalog")] == {"*"}
    with pytest.raises(InvalidArgument):
        parse_scopes(["repository-pull"])


def test_candidate_patterns_most_specific_first():
    assert candidate_patterns("a/b/c") == ["a/b/c", "a/b/*", "a/*", "*"]
    assert candidate_patterns("x") == ["x", "*"]


async def test_users_bcrypt_and_password_change(auth):
    store = auth.store
    rec = await store.add_user("alice", "s3cret")
    assert rec.password_hash.startswith("$2b$04$") and "s3cret" not in rec.password_hash
    with pytest.raises(AlreadyExists):
        await store.add_user("alice", "other")
    assert await store.verify_password("alice", "s3cret")
    assert await store.verify_password("alice", "s3cret")  # the cached path
    assert not await store.verify_password("alice", "wrong")
    assert not await store.verify_password("bob", "s3cret")
    await store.add_user("alice", "n3w", update=True)
    # The cache is keyed by the stored hash: the old password stops working at once.
    assert not await store.verify_password("alice", "s3cret")
    assert await store.verify_password("alice", "n3w")
    with pytest.raises(InvalidArgument):
        await store.add_user("bad:name", "x")
    with pytest.raises(InvalidArgument):
        await store.add_user("carol", "x" * 73)


async def test_concurrent_logins_cost_one_bcrypt(auth, monkeypatch):
    """Found under load: fifty clients logging in at once queued fifty bcrypt checks on the
    executor's few threads (token p99 ~7 s). The same check in flight is shared."""
    import asyncio

    import bcrypt
    from services.registry_gateway.auth import store as store_mod
    calls = []
    real = bcrypt.checkpw

    def counting(pw, hashed):
        calls.append(pw)
        return real(pw, hashed)
    monkeypatch.setattr(store_mod.bcrypt, "checkpw", counting)
    store = auth.store
    await store.add_user("erin", "pw-erin")
    assert all(await asyncio.gather(*(store.verify_password("erin", "pw-erin") for _ in range(20))))
    assert calls == [b"pw-erin"]
    assert not any(await asyncio.gather(*(store.verify_password("erin", "nope") for _ in range(20))))
    assert calls == [b"pw-erin", b"nope"]
    assert not store._checking  # nothing left pending


async def test_remove_user_drops_grants(auth):
    store = auth.store
    await store.add_user("dave", "pw")
    await store.grant("dave", "team/*", "push")
    assert await store.granted_actions("dave", "team/app") == {"pull", "push", "delete"}
    await store.remove_user("dave")
    assert not await store.verify_password("dave", "pw")
    assert await store.grants_of("dave") == []
    with pytest.raises(NotFound):
        await store.remove_user("dave")
    with pytest.raises(InvalidArgument):
        await store.remove_user("admin")


async def test_grants_patterns_and_revoke(auth):
    store = auth.store
    await store.add_user("erin", "pw")
    with pytest.raises(NotFound):
        await store.grant("nobody", "x/y", "pull")
    with pytest.raises(InvalidArgument):
        await store.grant("erin", "Bad Name", "pull")
    with pytest.raises(InvalidArgument):
        await store.grant("erin", "x/y", "write")
    await store.grant("erin", "team/*", "pull")
    await store.grant("erin", "team/app", "push")
    assert await store.granted_actions("erin", "team/app") == {"pull", "push", "delete"}
    assert await store.granted_actions("erin", "team/sub/lib") == {"pull"}
    assert await store.granted_actions("erin", "teamx/app") == frozenset()
    assert await store.granted_actions("erin", "team") == frozenset()  # team/* is below team
    await store.grant("erin", "team/app", "none")
    assert await store.granted_actions("erin", "team/app") == {"pull"}


async def test_visibility_most_specific_wins(auth):
    store = auth.store
    assert not await store.is_public("pub/app")
    await store.set_visibility("pub/*", True)
    assert await store.is_public("pub/app") and await store.is_public("pub/a/b")
    await store.set_visibility("pub/secret", False)
    assert not await store.is_public("pub/secret")
    assert await store.is_public("pub/app")
    await store.set_visibility("pub/*", False)
    assert not await store.is_public("pub/app")


async def test_token_access_is_the_intersection_of_asked_and_allowed(auth):
    store = auth.store
    await store.add_user("frank", "pw")
    await store.grant("frank", "frank/*", "push")
    await store.grant("frank", "shared/lib", "pull")
    await store.set_visibility("open/app", True)
    asked = parse_scopes(["repository:frank/app:pull,push", "repository:shared/lib:pull,push",
                          "repository:open/app:pull,push", "repository:secret/app:pull",
                          "registry:catalog:*"])
    issued = await auth.issue_token(Principal("frank", "basic"), asked)
    claims = auth.issuer.verify(issued.token)
    assert claims.subject == "frank"
    assert claims.access == {("repository", "frank/app"): {"pull", "push"},
                             ("repository", "shared/lib"): {"pull"},
                             ("repository", "open/app"): {"pull"}}
    assert issued.expires_in == auth.token_ttl and claims.expires_at > time.time()
    anon = auth.issuer.verify((await auth.issue_token(Principal("", "anonymous"), asked)).token)
    assert anon.subject == "" and anon.access == {("repository", "open/app"): {"pull"}}
    admin = auth.issuer.verify((await auth.issue_token(Principal("admin", "basic", admin=True), asked)).token)
    assert admin.access[("registry", "catalog")] == {"*"}
    assert admin.access[("repository", "secret/app")] == {"pull"}  # what was asked, no more


async def test_replicas_share_the_key_file_and_no_key_is_left_in_kv(auth, nc, buckets, tmp_path):
    acl = await kv_bucket(nc, buckets["acl_bucket"])
    # A key where an older version kept it, readable by every bus client: gone at start.
    await acl.put("signing-key", b'{"kid":"old","secret":"00","created_at":0}')
    other = await open_auth(nc, Config(data_dir=str(tmp_path)), **buckets)
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await acl.get("signing-key")
    tok = auth.issuer.issue("gina", [Scope("repository", "g/app", frozenset({"pull"}))], 60).token
    assert other.issuer.verify(tok).access == {("repository", "g/app"): {"pull"}}
    assert (tmp_path / "credentials" / "registry-token.key").exists()
    expired = auth.issuer.issue("gina", [], -60).token
    with pytest.raises(Unauthenticated, match="expired"):
        other.issuer.verify(expired)


async def test_ensure_admin_writes_a_private_password_file(nc, buckets, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKYARD_BCRYPT_ROUNDS", "4")
    try:
        pw = await ensure_admin(nc, tmp_path, **buckets)
        f = tmp_path / "admin-password"
        assert pw and f.read_text().strip() == pw
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
        assert await ensure_admin(nc, tmp_path, **buckets) is None
        assert f.read_text().strip() == pw
        store = await AuthStore.open(nc, **buckets, bcrypt_rounds=4)
        assert await store.verify_password("admin", pw)
        a = await open_auth(nc, Config(data_dir=str(tmp_path)), **buckets)
        assert (await a.authenticate(_basic("admin", pw))).admin
    finally:
        for b in buckets.values():
            await nc.jetstream().delete_key_value(b)


def _basic(user: str, pw: str) -> str:
    import base64
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
