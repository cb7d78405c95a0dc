"""The UI's routes over real HTTP: who sees what, logins, CSRF, cookies, admin actions, page sizes."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
import pytest_asyncio

from services.registry_gateway.ui.sessions import COOKIE
from tests.ui.conftest import ADMIN_PW, ALICE_PW
from tests.ui.uikit import csrf_of, login, push_layers, wasteful_image
from tests.unit.registry.conftest import running_gateway
from tests.unit.registry.ocidata import Image, push_image

pytestmark = pytest.mark.asyncio(loop_scope="module")
MAX_PAGE = 200_000


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pushed(ui_env):
    """public/app (public), secret/db and team/svc (private; alice may pull team/*)."""
    layers, config, _ = wasteful_image()
    await push_layers(ui_env.http, ui_env.url, "public/app", "v1", layers, config)
    for repo in ("secret/db", "team/svc"):
        await push_image(ui_env.http, ui_env.url, repo, "latest", Image(layer_size=2_000))
    await ui_env.auth.store.set_visibility("public/app", True)
    await _until_listed(ui_env.url, ["public/app", "secret/db", "team/svc"])
    return ui_env


async def _until_listed(url: str, names: list[str]) -> None:
    """The repositories page follows the buckets by watch: wait until it has seen the pushes."""
    s = await login(url, "admin", ADMIN_PW)
    async with s:
        for _ in range(200):
            async with s.get(f"{url}/ui/") as r:
                text = await r.text()
            if all(f">{n}<" in text for n in names):
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the repositories page never listed {names}")


def anon() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def test_anonymous_sees_public_repositories_only(pushed):
    async with anon() as s:
        async with s.get(f"{pushed.url}/ui/") as r:
            assert r.status == 200
            text = await r.text()
        assert ">public/app<" in text and "secret/db" not in text and "team/svc" not in text
        async with s.get(f"{pushed.url}/ui/repo", params={"name": "secret/db"}) as r:
            assert r.status == 404
        async with s.get(f"{pushed.url}/ui/image", params={"repo": "secret/db", "ref": "latest"}) as r:
            assert r.status == 404
        async with s.get(f"{pushed.url}/ui/repo", params={"name": "public/app"}) as r:
            assert r.status == 200 and ">v1<" in await r.text()


async def test_a_user_sees_what_their_grants_allow(pushed):
    async with await login(pushed.url, "alice", ALICE_PW) as s:
        async with s.get(f"{pushed.url}/ui/") as r:
            text = await r.text()
        assert ">public/app<" in text and ">team/svc<" in text and "secret/db" not in text
        async with s.get(f"{pushed.url}/ui/repo", params={"name": "team/svc"}) as r:
            assert r.status == 200
        async with s.get(f"{pushed.url}/ui/repo", params={"name": "secret/db"}) as r:
            assert r.status == 404
        async with s.get(f"{pushed.url}/ui/fleet") as r:
            assert r.status == 403  # admins only


async def test_login_cookie_flags_and_logout(pushed):
    async with anon() as s:
        async with s.get(f"{pushed.url}/ui/login") as r:
            token = csrf_of(await r.text())
            before = r.cookies[COOKIE].value
        async with s.post(f"{pushed.url}/ui/login", allow_redirects=False,
                          data={"username": "alice", "password": ALICE_PW, "csrf": token}) as r:
            assert r.status == 303 and r.headers["Location"] == "/ui/"
            cookie = r.headers["Set-Cookie"]
            assert r.cookies[COOKIE].value != before  # a new id at login: no fixation
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui/" in cookie
        assert "Secure" not in cookie  # plain HTTP here; request.secure turns it on
        async with s.get(f"{pushed.url}/ui/") as r:
            text = await r.text()
        assert "alice" in text and "team/svc" in text
        async with s.post(f"{pushed.url}/ui/logout", data={"csrf": csrf_of(text)}, allow_redirects=False) as r:
            assert r.status == 303
        async with s.get(f"{pushed.url}/ui/") as r:
            assert "team/svc" not in await r.text()


async def test_bad_password_is_refused_and_throttled(pushed):
    async with anon() as s:
        async with s.get(f"{pushed.url}/ui/login") as r:
            token = csrf_of(await r.text())
        statuses = []
        for _ in range(6):
            async with s.post(f"{pushed.url}/ui/login", allow_redirects=False,
                              data={"username": "nobody-ui", "password": "wrong", "csrf": token}) as r:
                statuses.append(r.status)
        # the registry's throttle: five free failures, then the name is blocked before bcrypt
        assert statuses[:5] == [401] * 5 and statuses[5] == 429


async def test_posts_without_the_csrf_token_are_refused(pushed):
    async with anon() as s:
        async with s.post(f"{pushed.url}/ui/login", data={"username": "admin", "password": ADMIN_PW},
                          allow_redirects=False) as r:
            assert r.status == 403
    async with await login(pushed.url, "admin", ADMIN_PW) as s:
        async with s.post(f"{pushed.url}/ui/visibility", data={"repo": "secret/db", "public": "1"}) as r:
            assert r.status == 403
        async with s.post(f"{pushed.url}/ui/visibility",
                          data={"repo": "secret/db", "public": "1", "csrf": "0" * 64}) as r:
            assert r.status == 403
    assert not await pushed.auth.store.is_public("secret/db")


async def test_the_tags_page_says_who_pushed_each_tag(pushed):
    await push_image(pushed.http, pushed.url, "team/who", "by-admin", Image(layer_size=1_000))
    async with await login(pushed.url, "alice", ALICE_PW) as s:
        async with s.get(f"{pushed.url}/ui/repo", params={"name": "team/who"}) as r:
            text = await r.text()
    row = re.search(r'<tr><td><a href="[^"]*">by-admin</a></td>.*?</tr>', text)
    assert row and '<td class="by">admin</td>' in row.group(0), text


async def test_only_admins_change_visibility_and_delete_tags(pushed):
    await push_image(pushed.http, pushed.url, "team/svc", "old", Image(layer_size=1_000))
    async with await login(pushed.url, "alice", ALICE_PW) as s:
        async with s.get(f"{pushed.url}/ui/repo", params={"name": "team/svc"}) as r:
            text = await r.text()
        assert "Make public" not in text and "Delete" not in text
        token = csrf_of(text)
        async with s.post(f"{pushed.url}/ui/visibility", data={"repo": "team/svc", "public": "1", "csrf": token}) as r:
            assert r.status == 403
        async with s.post(f"{pushed.url}/ui/untag", data={"repo": "team/svc", "tag": "old", "csrf": token}) as r:
            assert r.status == 403
    assert await pushed.auth.store.is_public("team/svc") is False
    async with await login(pushed.url, "admin", ADMIN_PW) as s:
        async with s.get(f"{pushed.url}/ui/repo", params={"name": "team/svc"}) as r:
            token = csrf_of(await r.text())
        async with s.post(f"{pushed.url}/ui/untag", data={"repo": "team/svc", "tag": "old", "csrf": token},
                          allow_redirects=False) as r:
            assert r.status == 303
    async with pushed.http.get(f"{pushed.url}/v2/team/svc/tags/list") as r:
        assert (await r.json())["tags"] == ["latest"]


async def test_the_image_page_shows_config_layers_and_the_culprit(pushed):
    _, _, made_by = wasteful_image()
    async with anon() as s:
        async with s.get(f"{pushed.url}/ui/image", params={"repo": "public/app", "ref": "v1"}) as r:
            assert r.status == 200
            text = await r.text()
    for instruction in made_by:
        assert instruction in text
    assert "MODE=ui-test" in text and "8080/tcp" in text and "org.example.team=yard" in text
    assert "[&quot;/bin/app&quot;, &quot;--serve&quot;]" in text
    culprits = text[text.index('id="culprits"'):]
    first = re.search(r"<code>(/[^<]+)</code>", culprits).group(1)
    assert first == "/opt/big.bin"  # the biggest culprit first, ahead of the overwritten /etc/motd
    assert "/etc/motd" in culprits
    assert 'id="wasted-total">300.0 KB' in text  # BIG bytes plus the 6 of the first /etc/motd


async def test_every_page_is_small_and_the_fleet_is_admin_only(pushed):
    async with anon() as s:
        async with s.get(f"{pushed.url}/ui/fleet") as r:
            assert r.status == 403
    async with await login(pushed.url, "admin", ADMIN_PW) as s:
        for path, params in [("/ui/", {}), ("/ui/repo", {"name": "public/app"}),
                             ("/ui/image", {"repo": "public/app", "ref": "v1"}), ("/ui/fleet", {}),
                             ("/ui/login", {}), ("/ui/static/ui.css", {}), ("/ui/static/ui.js", {})]:
            async with s.get(f"{pushed.url}{path}", params=params) as r:
                assert r.status == 200, path
                assert len(await r.read()) < MAX_PAGE, path


async def test_search_and_pagination(pushed):
    async with await login(pushed.url, "admin", ADMIN_PW) as s:
        async with s.get(f"{pushed.url}/ui/", params={"q": "team"}) as r:
            text = await r.text()
        assert ">team/svc<" in text and "public/app" not in text
        async with s.get(f"{pushed.url}/ui/", params={"page": "x"}) as r:
            assert r.status == 400


async def test_no_open_redirect_after_login(pushed):
    async with anon() as s:
        async with s.get(f"{pushed.url}/ui/login") as r:
            token = csrf_of(await r.text())
        async with s.post(f"{pushed.url}/ui/login", allow_redirects=False, data={
                "username": "alice", "password": ALICE_PW, "csrf": token, "next": "//evil.example/"}) as r:
            assert r.headers["Location"] == "/ui/"


async def test_ui_off(ui_env, monkeypatch):
    monkeypatch.setenv("DOCKYARD_UI", "off")
    async with running_gateway(ui_env.nc, ui_env.suffix, ui_env.auth, signer=ui_env.signer) as url, anon() as s:
        async with s.get(f"{url}/ui/") as r:
            assert r.status == 404


async def test_a_password_change_or_removal_ends_the_users_sessions(pushed):
    await pushed.auth.store.add_user("bob", "bob-pw-1")
    await pushed.auth.store.grant("bob", "team/*", "pull")
    async with await login(pushed.url, "bob", "bob-pw-1") as s:
        async with s.get(f"{pushed.url}/ui/repo", params={"name": "team/svc"}) as r:
            assert r.status == 200
        await pushed.auth.store.add_user("bob", "bob-pw-2", update=True)
        async with s.get(f"{pushed.url}/ui/repo", params={"name": "team/svc"}) as r:
            assert r.status == 404
    async with await login(pushed.url, "bob", "bob-pw-2") as s:
        await pushed.auth.store.remove_user("bob")
        async with s.get(f"{pushed.url}/ui/repo", params={"name": "team/svc"}) as r:
            assert r.status == 404
