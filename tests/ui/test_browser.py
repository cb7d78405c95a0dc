"""The web UI in a real browser (Debian's chromium through Playwright) against a real stack.

An admin logs in, finds an image the test pushed, sees its layers and the file a later layer
deletes as the biggest waste, makes the repository public and logs out; anonymously the public
repository is there and the private one is not. Each page is saved under docs/img/ for the README
when DOCKYARD_UI_SCREENSHOTS=1.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import aiohttp
import pytest

from services.registry_gateway.ui.sessions import COOKIE
from tests.e2e.conftest import REPO_ROOT, start_stack, stop_stack
from tests.ui.conftest import basic
from tests.ui.uikit import push_layers, wait_for_registry, wasteful_image
from tests.unit.registry.ocidata import Image, push_image

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO_ROOT / "docs" / "img"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = start_stack(tmp_path_factory.mktemp("dyui-stack"), only=["layer-store", "registry-gateway", "runtime-agent"])
    try:
        wait_for_registry(s.registry_url)
        asyncio.run(_push(s.registry_url, s.admin_password))  # before the browser: its loop owns the thread
        yield s
    finally:
        stop_stack(s)


async def _push(url: str, password: str) -> None:
    layers, config, _ = wasteful_image()
    async with aiohttp.ClientSession(headers={"Authorization": basic("admin", password)}) as http:
        await push_layers(http, url, "demo/wasteful", "v1", layers, config)
        await push_image(http, url, "demo/private", "v1", Image(layer_size=4_000))


@pytest.fixture
def browser(tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no {CHROMIUM} (Debian package chromium)")
    profile = tmp_path / "chromium-profile"  # a fresh profile: no state from any other run
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                    args=ARGS, viewport={"width": 1200, "height": 800})
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def _shot(page, name: str) -> None:
    """Render every page; write it to docs/img/ only when asked, so a test run leaves the tree clean."""
    png = page.screenshot(full_page=True)
    assert png[:8] == b"\x89PNG\r\n\x1a\n", f"{name}: the screenshot is not a PNG"
    if os.environ.get("DOCKYARD_UI_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        (SHOTS / f"ui-{name}.png").write_bytes(png)


def _until(page, url: str, text: str, tries: int = 100) -> None:
    """Reload until `text` shows: the repositories page follows the buckets by watch."""
    for _ in range(tries):
        page.goto(url)
        if text in page.content():
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"{text!r} never showed on {url}")


def test_browse_an_image_make_it_public_and_see_it_anonymously(stack, browser):
    base = f"{stack.registry_url}/ui/"
    page = browser.new_page()

    page.goto(base + "login")
    page.fill("#username", "admin")
    page.fill("#password", stack.admin_password)
    _shot(page, "login")
    page.click("form.login button[type=submit]")
    page.wait_for_url(base)
    cookie = next(c for c in browser.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui/"

    _until(page, base, "demo/private")
    assert page.locator("#repos a", has_text="demo/wasteful").count() == 1
    _shot(page, "repositories")

    page.click("#repos a >> text=demo/wasteful")
    assert "private" in page.inner_text("h1")
    _shot(page, "repository")

    page.click("#tags a >> text=v1")
    assert page.locator("#layers tr").count() == 4  # a header and three layers
    assert "rm /opt/big.bin" in page.inner_text("#layers")
    assert page.inner_text("#culprits tr:nth-child(2) td:first-child") == "/opt/big.bin"
    assert page.inner_text("#wasted-total") == "300.0 KB"
    page.click("#layers tr:nth-child(2) details summary")  # the first layer's added files
    _shot(page, "image")

    # a form post that does not carry the page's CSRF token is refused, cookie or not
    refused = page.request.post(base + "visibility", form={"repo": "demo/wasteful", "public": "1"})
    assert refused.status == 403

    page.goto(base + "repo?name=demo/wasteful")
    page.click("#toggle-visibility")
    page.wait_for_url("**/ui/repo?name=demo%2Fwasteful")
    assert "public" in page.inner_text("h1")

    for _ in range(100):  # the stack's runtime-agent, once its first heartbeat is in
        page.goto(base + "fleet")
        if page.locator("#agents tr").count() == 2 and "no runtime-agent" not in page.inner_text("#agents"):
            break
        page.wait_for_timeout(100)
    cells = [page.inner_text(f"#agents tr:nth-child(2) td:nth-child({i})") for i in (5, 6, 7)]
    assert re.fullmatch(r"\d+\.\d [MG]B", cells[0]) and re.fullmatch(r"\d+\.\d [MG]B", cells[1]), cells
    assert cells[2].isdigit(), cells  # memory free, memory total, containers
    _shot(page, "fleet")

    page.click("header form button[type=submit]")  # log out
    page.wait_for_url(base)
    assert "Log in" in page.inner_text("header")
    assert page.locator("#repos a", has_text="demo/wasteful").count() == 1
    assert "demo/private" not in page.content()
    resp = page.goto(base + "repo?name=demo/private")
    assert resp.status == 404
    resp = page.goto(base + "image?repo=demo/wasteful&ref=v1")
    assert resp.status == 200 and "/opt/big.bin" in page.inner_text("#culprits")
