"""The admin pages in a real browser (Debian's chromium through Playwright) against a real
stack: an admin adds a user and grants it a repository pattern through the forms, sees the
GC run that aborted a stale upload with the bytes it freed, and a form whose CSRF token was
tampered with changes nothing. Pages saved to docs/img/ with DOCKYARD_UI_SCREENSHOTS=1."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from tests.e2e.conftest import start_stack, stop_stack
from tests.ui.conftest import basic
from tests.ui.test_browser import ARGS, CHROMIUM, _shot
from tests.ui.uikit import wait_for_registry

pytestmark = pytest.mark.e2e
sync_api = pytest.importorskip("playwright.sync_api")
STALE = 12_345  # bytes of the upload the GC job aborts


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = start_stack(tmp_path_factory.mktemp("dyuia-stack"), only=["layer-store", "registry-gateway", "garbage-collector"])
    try:
        wait_for_registry(s.registry_url)
        yield s
    finally:
        stop_stack(s)


@pytest.fixture(scope="module")
def gc_ran(stack):
    """An upload left half done, then `dockyard gc run --job uploads --upload-idle 0s` aborts it."""
    auth = {"Authorization": basic("admin", stack.admin_password)}
    req = urllib.request.Request(f"{stack.registry_url}/v2/dyuia/stale/blobs/uploads/", method="POST", data=b"",
                                 headers=auth)
    with urllib.request.urlopen(req, timeout=30) as r:
        location = r.headers["Location"]
    target = location if location.startswith("http") else stack.registry_url + location
    req = urllib.request.Request(target, method="PATCH", data=os.urandom(STALE),
                                 headers={**auth, "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 202
    out = json.loads(stack.cli("--json", "gc", "run", "--job", "uploads", "--upload-idle", "0s").stdout)
    (report,) = out["reports"]
    assert report["removed"] == 1 and report["freed"] == STALE, report
    return report


@pytest.fixture
def browser(tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no {CHROMIUM} (Debian package chromium)")
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                    headless=True, args=ARGS, viewport={"width": 1200, "height": 800})
        try:
            yield ctx
        finally:
            ctx.close()


def test_users_grants_and_gc_runs(stack, gc_ran, browser):
    base = f"{stack.registry_url}/ui/"
    page = browser.new_page()
    page.goto(base + "login")
    page.fill("#username", "admin")
    page.fill("#password", stack.admin_password)
    page.click("form.login button[type=submit]")
    page.wait_for_url(base)

    page.click("header nav a >> text=Users")
    page.wait_for_url(base + "users")
    page.fill("#new-username", "carol")
    page.fill("#new-password", "carol-pw")
    page.select_option("#new-role", "reader")
    page.click("#add-user button[type=submit]")
    page.wait_for_url(base + "users")
    assert "reader" in page.inner_text('tr[data-user="carol"]')

    page.fill("#grant-username", "carol")
    page.fill("#grant-pattern", "dyuia/*")
    page.select_option("#grant-access", "push")
    page.click("#grant button[type=submit]")
    page.wait_for_url(base + "users")
    assert page.inner_text('tr[data-user="carol"] td.grants') == "push dyuia/*"
    _shot(page, "users")

    # the same form with its token altered: refused, and nobody added
    page.fill("#new-username", "mallory")
    page.fill("#new-password", "pw")
    page.eval_on_selector("#add-user input[name=csrf]", "e => e.value = '0'.repeat(32)")
    page.click("#add-user button[type=submit]")
    assert "CSRF" in page.content()
    page.goto(base + "users")
    assert page.locator('tr[data-user="mallory"]').count() == 0

    page.click("header nav a >> text=GC")
    page.wait_for_url(base + "gc")
    row = page.inner_text('#gc-jobs tr[data-job="uploads"]')
    assert "manual" in row and "12.3 KB" in page.inner_text('#gc-jobs tr[data-job="uploads"] td.freed'), row
    assert "never ran" in page.inner_text('#gc-jobs tr[data-job="registry"]')
    _shot(page, "gc")

    # the user made here logs in to the registry with the password the form set
    req = urllib.request.Request(f"{stack.registry_url}/v2/", headers={"Authorization": basic("carol", "carol-pw")})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
