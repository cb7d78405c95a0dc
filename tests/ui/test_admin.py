"""The UI's admin pages over real HTTP: users and grants (list, add, grant) and GC runs; admins
only, every form CSRF-checked, the same AuthStore the bus verbs use."""

from __future__ import annotations

import uuid

import aiohttp
import pytest

from tests.ui.conftest import ADMIN_PW, ALICE_PW
from tests.ui.uikit import csrf_of, login

pytestmark = pytest.mark.asyncio(loop_scope="module")


def anon() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def test_admin_lists_users_with_their_grants(ui_env):
    async with await login(ui_env.url, "admin", ADMIN_PW) as s:
        async with s.get(f"{ui_env.url}/ui/users") as r:
            assert r.status == 200
            text = await r.text()
    assert 'data-user="admin"' in text and 'data-user="alice"' in text
    assert "pull team/*" in text
    assert 'href="/ui/users"' in text and 'href="/ui/gc"' in text  # in the admin's navigation


async def test_add_a_user_and_grant_through_the_forms(ui_env):
    name = f"bob{uuid.uuid4().hex[:6]}"
    async with await login(ui_env.url, "admin", ADMIN_PW) as s:
        async with s.get(f"{ui_env.url}/ui/users") as r:
            token = csrf_of(await r.text())
        async with s.post(f"{ui_env.url}/ui/users/add", allow_redirects=False,
                          data={"username": name, "password": "bob-pw", "role": "reader", "csrf": token}) as r:
            assert r.status == 303 and r.headers["Location"] == "/ui/users"
        async with s.post(f"{ui_env.url}/ui/grant", allow_redirects=False,
                          data={"username": name, "pattern": "team/*", "access": "push", "csrf": token}) as r:
            assert r.status == 303
        async with s.get(f"{ui_env.url}/ui/users") as r:
            text = await r.text()
        assert f'data-user="{name}"' in text and "push team/*" in text
        # taken, unknown or malformed: refused with the reason, nothing changed
        async with s.post(f"{ui_env.url}/ui/users/add",
                          data={"username": name, "password": "other", "csrf": token}) as r:
            assert r.status == 409 and "already exists" in await r.text()
        async with s.post(f"{ui_env.url}/ui/grant",
                          data={"username": "nobody-here", "pattern": "x/*", "access": "pull", "csrf": token}) as r:
            assert r.status == 404
        async with s.post(f"{ui_env.url}/ui/grant",
                          data={"username": name, "pattern": "team/*", "access": "own", "csrf": token}) as r:
            assert r.status == 400
        async with s.post(f"{ui_env.url}/ui/users/add",
                          data={"username": f"{name}x", "password": "pw", "role": "root", "csrf": token}) as r:
            assert r.status == 400
    rec = await ui_env.auth.store.get_user(name)
    assert rec is not None and rec.role == "reader" and await ui_env.auth.store.verify_password(name, "bob-pw")
    assert [(g.pattern, g.access) for g in await ui_env.auth.store.grants_of(name)] == [("team/*", "push")]
    assert await ui_env.auth.store.get_user(f"{name}x") is None
    async with await login(ui_env.url, name, "bob-pw") as s:  # the new user logs in to the UI
        async with s.get(f"{ui_env.url}/ui/") as r:
            assert r.status == 200 and name in await r.text()


async def test_forms_without_the_csrf_token_change_nothing(ui_env):
    name = f"eve{uuid.uuid4().hex[:6]}"
    async with await login(ui_env.url, "admin", ADMIN_PW) as s:
        for token in ("", "0" * 32):
            async with s.post(f"{ui_env.url}/ui/users/add",
                              data={"username": name, "password": "pw", "csrf": token}) as r:
                assert r.status == 403
            async with s.post(f"{ui_env.url}/ui/grant",
                              data={"username": "alice", "pattern": "secret/*", "access": "push", "csrf": token}) as r:
                assert r.status == 403
    assert await ui_env.auth.store.get_user(name) is None
    assert [g.pattern for g in await ui_env.auth.store.grants_of("alice")] == ["team/*"]


async def test_only_admins_see_or_use_the_admin_pages(ui_env):
    async with await login(ui_env.url, "alice", ALICE_PW) as s:
        async with s.get(f"{ui_env.url}/ui/users") as r:
            assert r.status == 403
            text = await r.text()
        assert 'href="/ui/users"' not in text
        async with s.get(f"{ui_env.url}/ui/gc") as r:
            assert r.status == 403
        async with s.post(f"{ui_env.url}/ui/grant", data={"username": "alice", "pattern": "secret/*",
                                                          "access": "push", "csrf": csrf_of(text)}) as r:
            assert r.status == 403
    async with anon() as s:
        for path in ("/ui/users", "/ui/gc"):
            async with s.get(f"{ui_env.url}{path}") as r:
                assert r.status in (401, 403) and "data-user" not in await r.text()
    assert [g.pattern for g in await ui_env.auth.store.grants_of("alice")] == ["team/*"]


async def test_the_gc_page_says_when_no_collector_answers(ui_env):
    async with await login(ui_env.url, "admin", ADMIN_PW) as s:
        async with s.get(f"{ui_env.url}/ui/gc") as r:
            assert r.status == 200
            text = await r.text()
    assert 'id="gc-jobs"' in text
