"""The Docker token flow and Basic auth over real HTTP, and the management verbs on the bus."""

from __future__ import annotations

import base64
import re

import pytest
from aiohttp import web

from services.registry_gateway.errors import error_response
from shared import subjects
from shared.bus import BusClient, BusService
from shared.errors import DockyardError, NotFound
from shared.messages.auth import (EnsureAdminReply, EnsureAdminRequest, GrantReply, GrantRequest, TokenReply, TokenRequest, UserAddRequest,
                                  UserReply, UserRmRequest, VisibilityReply, VisibilityRequest)
from shared.messages.common import Ok


def basic(user: str, pw: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


@pytest.fixture
async def client(auth, aiohttp_client):
    """A tiny API whose handlers ask `authorize` as the gateway's do."""

    def guarded(repo_of, actions):
        async def handler(request: web.Request) -> web.Response:
            try:
                p = await auth.authorize(request, repo_of(request), frozenset(actions))
            except DockyardError as e:
                return error_response(e)  # the gateway's own mapping
            return web.json_response({"user": p.name})
        return handler

    app = web.Application()
    app.add_routes(auth.routes())
    app.router.add_get("/v2/", guarded(lambda r: None, ()))
    app.router.add_get("/v2/_catalog", guarded(lambda r: None, ("catalog",)))
    app.router.add_get("/v2/{repo:.+}/pull", guarded(lambda r: r.match_info["repo"], ("pull",)))
    app.router.add_post("/v2/{repo:.+}/push", guarded(lambda r: r.match_info["repo"], ("push",)))
    store = auth.store
    await store.add_user("alice", "alicepw")
    await store.add_user("admin", "adminpw")
    await store.grant("alice", "alice/*", "push")
    await store.grant("alice", "shared/lib", "pull")
    await store.set_visibility("public/app", True)
    return await aiohttp_client(app)


def challenge(resp) -> dict[str, str]:
    h = resp.headers["WWW-Authenticate"]
    assert h.startswith("Bearer ")
    return dict(re.findall(r'(\w+)="([^"]*)"', h))


async def test_anonymous_base_gets_a_bearer_challenge(client):
    r = await client.get("/v2/")
    assert r.status == 401
    c = challenge(r)
    assert c["realm"] == f"http://{client.host}:{client.port}/token" and c["service"] == "dockyard"
    assert "scope" not in c


async def test_anonymous_pull_public_yes_private_no(client):
    assert (await client.get("/v2/public/app/pull")).status == 200
    r = await client.get("/v2/shared/lib/pull")
    assert r.status == 401
    assert challenge(r)["scope"] == "repository:shared/lib:pull"
    r = await client.post("/v2/public/app/push")
    assert r.status == 401
    assert challenge(r)["scope"] == "repository:public/app:pull,push"
    # Anonymous token flow: the token endpoint answers, but only public pull is in it.
    t = await (await client.get("/token", params={"service": "dockyard",
                                                  "scope": "repository:shared/lib:pull"})).json()
    assert (await client.get("/v2/shared/lib/pull", headers=bearer(t["token"]))).status == 401
    t = await (await client.get("/token", params={"scope": "repository:public/app:pull"})).json()
    assert (await client.get("/v2/public/app/pull", headers=bearer(t["token"]))).status == 200


async def test_token_flow_scopes(client):
    r = await client.get("/token", params=[("service", "dockyard"),
                                          ("scope", "repository:alice/app:pull,push"),
                                          ("scope", "repository:shared/lib:pull,push")],
                         headers=basic("alice", "alicepw"))
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    body = await r.json()
    assert body["token"] == body["access_token"] and body["expires_in"] > 0 and body["issued_at"].endswith("Z")
    h = bearer(body["token"])
    assert (await client.get("/v2/", headers=h)).status == 200
    assert (await client.post("/v2/alice/app/push", headers=h)).status == 200
    assert (await client.get("/v2/shared/lib/pull", headers=h)).status == 200
    # Not in this token, whether alice could have it or not: insufficient_scope, as distribution says.
    for path in ("/v2/shared/lib/push", "/v2/alice/other/push"):
        r = await client.post(path, headers=h)
        assert r.status == 401 and challenge(r)["error"] == "insufficient_scope"
    # The catalog is for admin only.
    r = await client.get("/v2/_catalog", headers=h)
    assert r.status == 401 and challenge(r)["scope"] == "registry:catalog:*"
    assert (await client.get("/v2/_catalog", headers=basic("alice", "alicepw"))).status == 403
    admin = await (await client.get("/token", params={"scope": "registry:catalog:*"},
                                    headers=basic("admin", "adminpw"))).json()
    assert (await client.get("/v2/_catalog", headers=bearer(admin["token"]))).status == 200


async def test_token_endpoint_refuses_bad_credentials_and_services(client):
    r = await client.get("/token", params={"scope": "repository:alice/app:pull"}, headers=basic("alice", "nope"))
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    assert (await r.json())["errors"][0]["code"] == "UNAUTHORIZED"
    assert (await client.get("/token", params={"service": "other"})).status == 400
    assert (await client.get("/token", params={"scope": "garbage"})).status == 400


async def test_basic_auth_on_the_api(client):
    assert (await client.post("/v2/alice/app/push", headers=basic("alice", "alicepw"))).status == 200
    r = await client.post("/v2/bob/app/push", headers=basic("alice", "alicepw"))
    assert r.status == 403
    r = await client.get("/v2/alice/app/pull", headers=basic("alice", "wrong"))
    assert r.status == 401 and challenge(r)["error"] == "invalid_token"
    assert (await client.post("/v2/any/thing/push", headers=basic("admin", "adminpw"))).status == 200
    assert (await client.get("/v2/_catalog", headers=basic("admin", "adminpw"))).status == 200
    r = await client.get("/v2/alice/app/pull", headers=bearer("forged.token.here"))
    assert r.status == 401


async def test_bus_verbs(auth, nc, client, tmp_path):
    svc = BusService(nc, "dyau-auth-test")
    auth.register_bus(svc)
    await svc.start()
    try:
        b = BusClient(nc)
        u = await b.request(subjects.REGISTRY_USER_ADD, UserAddRequest(username="carol", password="cpw"), UserReply)
        assert u.username == "carol" and u.created_at > 0
        g = await b.request(subjects.REGISTRY_GRANT,
                            GrantRequest(username="carol", repository="team/*", access="pull"), GrantReply)
        assert g.actions == ["pull"]
        with pytest.raises(NotFound):
            await b.request(subjects.REGISTRY_GRANT,
                            GrantRequest(username="nobody", repository="x", access="pull"), GrantReply)
        assert (await client.get("/v2/team/app/pull", headers=basic("carol", "cpw"))).status == 200
        assert (await client.get("/v2/other/app/pull", headers=basic("carol", "cpw"))).status == 403
        v = await b.request(subjects.REGISTRY_REPO_VISIBILITY,
                            VisibilityRequest(repository="other/app", public=True), VisibilityReply)
        assert v.public and (await client.get("/v2/other/app/pull")).status == 200
        t = await b.request(subjects.REGISTRY_TOKEN,
                            TokenRequest(account="builder", scopes=["repository:priv/x:pull,push"]), TokenReply)
        assert (await client.post("/v2/priv/x/push", headers=bearer(t.token))).status == 200
        assert (await client.get("/v2/priv/y/pull", headers=bearer(t.token))).status == 401
        await b.request(subjects.REGISTRY_USER_RM, UserRmRequest(username="carol"), Ok)
        assert (await client.get("/v2/team/app/pull", headers=basic("carol", "cpw"))).status == 401
        # The fixture's admin exists already: nothing created, no file written.
        pwfile = tmp_path / "admin-password"
        r = await b.request(subjects.REGISTRY_ENSURE_ADMIN, EnsureAdminRequest(password_file=str(pwfile)), EnsureAdminReply)
        assert not r.created and not pwfile.exists()
        await auth.store.users.delete("admin")
        r = await b.request(subjects.REGISTRY_ENSURE_ADMIN, EnsureAdminRequest(password_file=str(pwfile)), EnsureAdminReply)
        assert r.created and (await client.get("/v2/x/y/pull", headers=basic("admin", pwfile.read_text().strip()))).status == 200
    finally:
        await svc.stop()


async def test_auth_off_lets_everything_through(nc, buckets, monkeypatch, tmp_path, aiohttp_client):
    from services.registry_gateway.auth import open_auth
    from shared.config import Config
    monkeypatch.setenv("DOCKYARD_AUTH", "off")
    a = await open_auth(nc, Config(data_dir=str(tmp_path)), **buckets)
    try:
        async def h(request):
            p = await a.authorize(request, "x/y", frozenset({"push"}))
            return web.Response(text=p.via)
        app = web.Application()
        app.router.add_get("/", h)
        c = await aiohttp_client(app)
        r = await c.get("/")
        assert r.status == 200 and await r.text() == "disabled"
    finally:
        for bk in buckets.values():
            await nc.jetstream().delete_key_value(bk)


# ---- refusals exactly as CNCF distribution writes them -------------------------------------

def records(name: str, *actions: str, typ: str = "repository") -> list[dict]:
    return [{"Type": typ, "Class": "", "Name": name, "Action": a} for a in actions]


def expected_challenge(client, scope: str | None = None, error: str = "") -> str:
    """The exact WWW-Authenticate distribution would send (realm, service, scope, error in that order)."""
    h = f'Bearer realm="http://{client.host}:{client.port}/token",service="dockyard"'
    return h + (f',scope="{scope}"' if scope else "") + (f',error="{error}"' if error else "")


async def assert_challenged(r, client, scope: str | None, error: str, detail) -> None:
    """A 401 exactly as distribution sends it: the challenge header and the UNAUTHORIZED body."""
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == expected_challenge(client, scope, error)
    assert await r.json() == unauthorized(detail)


async def get_token(client, scope: str, creds: dict[str, str] | None = None) -> str:
    r = await client.get("/token", params={"service": "dockyard", "scope": scope}, headers=creds or {})
    assert r.status == 200
    return (await r.json())["token"]


def unauthorized(detail) -> dict:
    """distribution's body for every 401: errcode.ErrorCodeUnauthorized.WithDetail(accessRecords)."""
    return {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required", "detail": detail}]}


async def test_no_authorization_header_gets_the_plain_challenge(client):
    await assert_challenged(await client.get("/v2/"), client, None, "", None)
    await assert_challenged(await client.get("/v2/shared/lib/pull"), client, "repository:shared/lib:pull", "",
                            records("shared/lib", "pull"))
    await assert_challenged(await client.post("/v2/public/app/push"), client, "repository:public/app:pull,push",
                            "", records("public/app", "pull", "push"))


async def test_a_valid_token_without_the_access_gets_insufficient_scope(client):
    # docker's anonymous pull of a private repository: the token endpoint grants nothing.
    anon = await get_token(client, "repository:shared/lib:pull")
    await assert_challenged(await client.get("/v2/shared/lib/pull", headers=bearer(anon)), client,
                            "repository:shared/lib:pull", "insufficient_scope", records("shared/lib", "pull"))
    # A valid anonymous token passes the base check, as any valid token does in distribution.
    assert (await client.get("/v2/", headers=bearer(anon))).status == 200
    # An under-privileged user's token: the same answer for a push alice may not make.
    tok = await get_token(client, "repository:shared/lib:pull,push", basic("alice", "alicepw"))
    await assert_challenged(await client.post("/v2/shared/lib/push", headers=bearer(tok)), client,
                            "repository:shared/lib:pull,push", "insufficient_scope",
                            records("shared/lib", "pull", "push"))
    await assert_challenged(await client.get("/v2/_catalog", headers=bearer(tok)), client, "registry:catalog:*",
                            "insufficient_scope", records("catalog", "*", typ="registry"))
    # A token for one repository does not open another.
    await assert_challenged(await client.get("/v2/alice/app/pull", headers=bearer(tok)), client,
                            "repository:alice/app:pull", "insufficient_scope", records("alice/app", "pull"))
    # A token with fewer actions than asked does not open the one it lacks, though alice may push.
    pull_only = await get_token(client, "repository:alice/app:pull", basic("alice", "alicepw"))
    assert (await client.get("/v2/alice/app/pull", headers=bearer(pull_only))).status == 200
    await assert_challenged(await client.post("/v2/alice/app/push", headers=bearer(pull_only)), client,
                            "repository:alice/app:pull,push", "insufficient_scope",
                            records("alice/app", "pull", "push"))


async def test_bad_tokens_get_invalid_token(client, auth):
    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import ec
    good = await get_token(client, "repository:alice/app:pull", basic("alice", "alicepw"))
    kid = pyjwt.get_unverified_header(good)["kid"]
    claims = pyjwt.decode(good, options={"verify_signature": False})
    other = pyjwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": kid})
    expired = auth.issuer.issue("alice", [], -60).token
    for tok in (other, expired, "forged.token.here", good[:-6] + "AAAAAA"):
        await assert_challenged(await client.get("/v2/alice/app/pull", headers=bearer(tok)), client,
                                "repository:alice/app:pull", "invalid_token", records("alice/app", "pull"))
    assert (await client.get("/v2/alice/app/pull", headers=bearer(good))).status == 200


# ---- failed logins are throttled ---------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(auth):
    from services.registry_gateway.auth.throttle import LoginThrottle
    c = Clock()
    auth.throttle = LoginThrottle(clock=c)
    return c


async def test_failed_logins_throttle_the_user_then_back_off(client, auth, clock):
    calls = []
    real = auth.store.verify_password

    async def counting(user, pw):
        calls.append(user)
        return await real(user, pw)
    auth.store.verify_password = counting
    for _ in range(5):
        r = await client.get("/token", headers=basic("alice", "guess"))
        assert r.status == 401
    # Throttled: even the right password is not checked (no bcrypt), for one second.
    n = len(calls)
    for path in ("/token", "/v2/alice/app/pull"):
        r = await client.get(path, headers=basic("alice", "alicepw"))
        assert r.status == 429 and r.headers["Retry-After"] == "1"
        assert (await r.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert len(calls) == n
    clock.now += 1
    assert (await client.get("/token", headers=basic("alice", "guess"))).status == 401
    r = await client.get("/token", headers=basic("alice", "alicepw"))
    assert r.status == 429 and r.headers["Retry-After"] == "2"  # doubled
    clock.now += 2
    # A success clears alice's count: five failures again before the next block.
    assert (await client.get("/token", headers=basic("alice", "alicepw"))).status == 200
    for _ in range(4):
        assert (await client.get("/v2/alice/app/pull", headers=basic("alice", "guess"))).status == 401
    assert (await client.get("/v2/alice/app/pull", headers=basic("alice", "alicepw"))).status == 200


def test_a_success_resets_the_user_not_the_address():
    from services.registry_gateway.auth.throttle import LoginThrottle
    c = Clock()
    t = LoginThrottle(clock=c)
    for _ in range(4):
        assert t.failed("alice", "10.0.0.1") == 0
    assert t.failed("alice", "10.0.0.1") == 1 and t.retry_after("alice", "10.0.0.8") == 1
    c.now += 1
    t.succeeded("alice")
    assert t.retry_after("alice", "10.0.0.8") == 0
    # The address's count stands: 15 more failures from it (under any name) and it is blocked.
    for i in range(14):
        assert t.failed(f"u{i}", "10.0.0.1") == 0
    assert t.failed("u99", "10.0.0.1") == 1 and t.retry_after("alice", "10.0.0.1") == 1
    # Delays double, up to a ceiling, and an address's count fades when it stops failing.
    for _ in range(4):
        t.failed("bob", "10.2.0.1")
    assert [t.failed("bob", "10.2.0.1") for _ in range(3)] == [1, 2, 4]
    assert max(t.failed("bob", "10.2.0.1") for _ in range(40)) == 900
    c.now += 900 + 901
    assert t.retry_after("carol", "10.2.0.1") == 0 and t.failed("carol", "10.2.0.1") == 0


async def test_failed_logins_throttle_the_client_address_across_user_names(client, clock):
    for i in range(20):
        assert (await client.get("/token", headers=basic(f"nobody{i}", "guess"))).status == 401
    # Every name from this address is now held back, even a real user with the right password.
    r = await client.get("/token", headers=basic("admin", "adminpw"))
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    clock.now += 1
    assert (await client.get("/token", headers=basic("admin", "adminpw"))).status == 200


# ---- refusals are logged, secrets are not ------------------------------------------------

async def test_refusals_are_logged_without_secrets(client, caplog):
    import logging
    caplog.set_level(logging.INFO, logger="dockyard.registry")
    tok = await get_token(client, "repository:alice/app:pull", basic("alice", "alicepw"))
    assert (await client.get("/v2/shared/lib/pull", headers=bearer(tok))).status == 401
    assert (await client.get("/v2/alice/app/pull", headers=basic("alice", "s3cret-guess"))).status == 401
    assert (await client.post("/v2/bob/app/push", headers=basic("alice", "alicepw"))).status == 403
    assert (await client.get("/v2/shared/lib/pull")).status == 401
    assert (await client.get("/token", headers=basic("alice", "other-guess"))).status == 401
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    refused = [m for m in lines if m.startswith("refused ")]
    assert any("401 GET /v2/shared/lib/pull from 127.0.0.1: user=alice scope=repository:shared/lib:pull: "
               "the token does not grant" in m for m in refused)
    assert any("401 GET /v2/alice/app/pull" in m and "user=alice(unverified)" in m and "invalid username" in m
               for m in refused)
    assert any("403 POST /v2/bob/app/push" in m and "user=alice " in m and "scope=repository:bob/app:push" in m
               for m in refused)
    assert any("401 GET /v2/shared/lib/pull" in m and "user=anonymous" in m for m in refused)
    assert any("401 GET /token" in m and "user=alice(unverified)" in m for m in refused)
    assert any(m.startswith("login failed: user=alice from 127.0.0.1") for m in lines)
    everything = caplog.text + "\n".join(lines)
    for secret in ("alicepw", "s3cret-guess", "other-guess", tok, tok.split(".")[2]):
        assert secret not in everything


async def test_access_log_on_demand_names_the_caller_not_the_token(auth, aiohttp_client, monkeypatch, caplog):
    import logging

    from services.registry_gateway import accesslog
    caplog.set_level(logging.INFO, logger="dockyard.registry.access")
    assert accesslog.middlewares() == []

    async def pull(request):
        await auth.authorize(request, "public/app", frozenset({"pull"}))
        return web.Response(text="layer bytes")

    monkeypatch.setenv("DOCKYARD_ACCESS_LOG", "1")
    app = web.Application(middlewares=accesslog.middlewares())
    app.router.add_get("/v2/public/app/blobs/x", pull)
    app.add_routes(auth.routes())
    c = await aiohttp_client(app)
    await auth.store.add_user("dora", "dorapw")
    await auth.store.set_visibility("public/app", True)
    tok = (await (await c.get("/token", params={"scope": "repository:public/app:pull"},
                              headers=basic("dora", "dorapw"))).json())["token"]
    assert (await c.get("/v2/public/app/blobs/x", headers=bearer(tok))).status == 200
    assert (await c.get("/v2/public/app/blobs/x")).status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "dockyard.registry.access"]
    assert any(m.startswith('127.0.0.1 dora "GET /v2/public/app/blobs/x" 200 11 ') for m in lines)
    assert any(m.startswith('127.0.0.1 anonymous "GET /v2/public/app/blobs/x" 200 ') for m in lines)
    assert any(m.startswith('127.0.0.1 - "GET /token" 200 ') for m in lines)
    assert not any(tok in m or "dorapw" in m or "scope=" in m for m in lines)
