"""The Docker token flow and Basic auth over real HTTP, and the management verbs on the bus."""

from __future__ import annotations

import base64
import re

import pytest
from aiohttp import web

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
                headers = {}
                if isinstance(e.detail, dict) and "www_authenticate" in e.detail:
                    headers["WWW-Authenticate"] = e.detail["www_authenticate"]
                return web.json_response({"errors": [{"code": e.detail_code, "message": e.message}]},
                                         status=e.http_status, headers=headers)
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
    # Allowed pull only: alice is refused push outright, not sent for another token.
    r = await client.post("/v2/shared/lib/push", headers=h)
    assert r.status == 403 and (await r.json())["errors"][0]["code"] == "DENIED"
    # Allowed, but not in this token: ask for a new token.
    r = await client.post("/v2/alice/other/push", headers=h)
    assert r.status == 401 and challenge(r)["error"] == "insufficient_scope"
    # The catalog is for admin only.
    assert (await client.get("/v2/_catalog", headers=h)).status == 403
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
