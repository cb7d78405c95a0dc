"""The UI's session cookie is Secure when the gateway speaks HTTPS (a real TLS listener)."""

from __future__ import annotations

import ssl

import aiohttp
import pytest
from aiohttp import web

from shared import tls
from services.registry_gateway.app import create_app
from services.registry_gateway.ui.sessions import COOKIE
from tests.ui.conftest import ALICE_PW
from tests.ui.uikit import csrf_of

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_the_session_cookie_is_secure_over_https(ui_env, tmp_path):
    tls.ensure_ca(tmp_path)
    tls.ensure_node_cert(tmp_path, "dyui-https", ["127.0.0.1"])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / tls.NODE_CERT_FILE, tmp_path / tls.NODE_KEY_FILE)
    runner = web.AppRunner(create_app(ui_env.nc, ui_env.auth, signer=ui_env.signer, meta_suffix=ui_env.suffix),
                           access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server)
    await site.start()
    url = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        client = aiohttp.TCPConnector(ssl=tls.client_context(tmp_path / tls.CA_FILE))
        async with aiohttp.ClientSession(connector=client, cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async with s.get(f"{url}/ui/login") as r:
                assert r.status == 200
                anonymous = r.headers["Set-Cookie"]
                token = csrf_of(await r.text())
            async with s.post(f"{url}/ui/login", allow_redirects=False,
                              data={"username": "alice", "password": ALICE_PW, "csrf": token}) as r:
                assert r.status == 303
                cookie = r.headers["Set-Cookie"]
            async with s.get(f"{url}/ui/") as r:  # the Secure cookie goes back over HTTPS: logged in
                assert "alice" in await r.text()
        for c in (anonymous, cookie):
            assert c.startswith(f"{COOKIE}=")
            flags = {f.strip().split("=")[0].lower() for f in c.split(";")[1:]}
            assert {"secure", "httponly", "samesite"} <= flags, c
        assert "SameSite=Strict" in cookie
    finally:
        await runner.cleanup()
