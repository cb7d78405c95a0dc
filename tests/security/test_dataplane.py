"""The layer-store's HTTP listener refuses whoever the registry-gateway did not sign for.

Real processes (`dockyard up --only layer-store --only registry-gateway`, auth on). The
layer-store's address is learnt the way a client learns it, from a blob redirect; every
refusal is a 403 with an OCI error body, and the signed URL next to it works, so each
refusal is the signature's doing."""

from __future__ import annotations

import json
import os
import stat
import time
import urllib.error
import urllib.request

import pytest
from yarl import URL

from shared.dataplane_sign import DataplaneSigner, key_path, load_key
from shared.oci.digest import Digest
from tests.e2e.conftest import start_stack, stop_stack
from tests.support.plainhttp import basic_auth, request

pytestmark = pytest.mark.e2e

REPO = "dysec/private"
LAYER = os.urandom(100_000)
DIGEST = str(Digest.from_bytes(LAYER))


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = start_stack(tmp_path_factory.mktemp("dysec-stack"), only=["layer-store", "registry-gateway"])
    yield s
    assert stop_stack(s) == 0, (s.data_dir / "up.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def auth(stack) -> dict[str, str]:
    return basic_auth(stack.admin_creds)


@pytest.fixture(scope="module")
def signed_blob_url(stack, auth) -> URL:
    """A blob pushed through the registry, and the signed layer-store URL its GET redirects to."""
    status, _, body = request(f"{stack.registry_url}/v2/{REPO}/blobs/uploads/?digest={DIGEST}", "POST",
                              data=LAYER, headers=auth)
    assert status == 201, body
    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(f"{stack.registry_url}/v2/{REPO}/blobs/{DIGEST}", headers=auth)
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(req, timeout=20)
    assert e.value.code == 307
    url = URL(e.value.headers["Location"])
    assert url.port != URL(stack.registry_url).port
    return url


def denied(status: int, body: bytes) -> bool:
    return status == 403 and [e["code"] for e in json.loads(body)["errors"]] == ["DENIED"]


def test_the_signed_url_serves_the_blob(signed_blob_url):
    status, headers, body = request(signed_blob_url)
    assert status == 200 and body == LAYER and headers["Docker-Content-Digest"] == DIGEST


def test_unsigned_reads_are_refused(signed_blob_url):
    base = signed_blob_url.with_path("/").with_query(None)
    for path in (signed_blob_url.path, f"/blobs/{DIGEST}", "/", "/metrics/x", "/uploads/x"):
        status, _, body = request(base.with_path(path))
        assert denied(status, body), (path, status, body)
    status, _, _ = request(base.with_path(f"/blobs/{DIGEST}"), "HEAD")
    assert status == 403


def test_forged_and_altered_signatures_are_refused(signed_blob_url):
    q = dict(signed_blob_url.query)
    forger = DataplaneSigner(os.urandom(32)).sign("GET", signed_blob_url.path, DIGEST)
    flipped = q["sig"][:-1] + ("0" if q["sig"][-1] != "0" else "1")
    for query in (forger, {**q, "sig": flipped}, {**q, "exp": str(int(q["exp"]) + 60)}):
        status, _, body = request(signed_blob_url.with_query(query))
        assert denied(status, body), query
    # the same signature on another blob's path, or for another method
    other = signed_blob_url.with_path(f"/blobs/sha256:{'0' * 64}")
    assert denied(*request(other)[::2])
    assert request(signed_blob_url, "DELETE")[0] == 403


def test_expired_signatures_are_refused(stack, signed_blob_url):
    real = DataplaneSigner(load_key(stack.data_dir))
    expired = real.sign("GET", signed_blob_url.path, DIGEST, ttl=-1)
    assert denied(*request(signed_blob_url.with_query(expired))[::2])
    fresh = real.sign("GET", signed_blob_url.path, DIGEST, ttl=60)
    assert request(signed_blob_url.with_query(fresh))[0] == 200  # the key is the one in credentials/


def test_uploads_need_a_signature(stack, signed_blob_url):
    base = signed_blob_url.with_path("/uploads").with_query(None)
    real = DataplaneSigner(load_key(stack.data_dir))
    now = time.time()
    for query in ({}, DataplaneSigner(os.urandom(32)).sign("POST", "/uploads"),
                  real.sign("POST", "/uploads", now=now - 3600)):
        status, _, body = request(base.with_query(query), "POST", data=b"")
        assert denied(status, body), query
    status, headers, _ = request(base.with_query(real.sign("POST", "/uploads")), "POST", data=b"")
    assert status == 201
    upload = headers["Location"]
    assert request(base.with_path(upload), "PATCH", data=b"bytes")[0] == 403
    assert request(base.with_path(upload).with_query(real.sign("DELETE", upload)), "DELETE")[0] == 204


def test_direct_upload_urls_are_bound_to_their_session(stack, auth, signed_blob_url):
    status, headers, _ = request(f"{stack.registry_url}/v2/{REPO}/blobs/uploads/", "POST", data=b"",
                                 headers=auth)
    assert status == 202
    location = URL(headers["Location"])
    assert location.port == signed_blob_url.port, "on loopback the session goes straight to the layer-store"
    assert denied(*request(location.with_query(None), "PATCH", data=b"x")[::2])
    assert denied(*request(location.with_query({**location.query, "exp": "1"}), "PATCH", data=b"x")[::2])
    status, _, _ = request(location, "PATCH", data=b"x", headers={"Content-Range": "0-0"})
    assert status == 202


def test_the_key_is_private(stack):
    path = key_path(stack.data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_metrics_is_the_one_unsigned_route_and_answers_loopback(stack, signed_blob_url):
    """`GET /metrics` needs no signature (Prometheus has none); from loopback it answers.
    Any other method on it is still refused as an unsigned request."""
    base = signed_blob_url.with_path("/metrics").with_query(None)
    status, headers, body = request(base)
    assert status == 200 and b"dockyard_blob_store_blobs " in body, (status, body[:200])
    assert headers["Content-Type"].startswith("text/plain")
    assert denied(*request(base, "POST", data=b"")[::2])
    assert denied(*request(base, "DELETE")[::2])


async def test_metrics_refuses_remote_clients_without_the_token(tmp_path, monkeypatch):
    """A client that is not on loopback gets metrics only with DOCKYARD_METRICS_TOKEN."""
    import aiohttp
    from aiohttp import web

    from services.layer_store.http import create_app
    from services.layer_store.storage.filesystem import FilesystemDriver
    from tests.support.hostaddr import non_loopback_address

    token = os.urandom(16).hex()
    monkeypatch.setenv("DOCKYARD_METRICS_TOKEN", token)
    app = create_app(FilesystemDriver(tmp_path / "store"), DataplaneSigner(os.urandom(32)))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        with non_loopback_address() as addr:
            site = web.TCPSite(runner, addr, 0)
            await site.start()
            url = f"http://{addr}:{runner.addresses[0][1]}/metrics"
            async with aiohttp.ClientSession() as http:
                for headers in ({}, {"Authorization": f"Bearer {token[:-1]}x"}, {"Authorization": f"Basic {token}"},
                                {"Authorization": "Bearer "}):
                    async with http.get(url, headers=headers) as r:
                        body = await r.read()
                        assert r.status == 403, (headers, r.status)
                        assert b"dockyard_" not in body and json.loads(body)["errors"][0]["code"] == "DENIED"
                async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 200 and b"dockyard_blob_store_blobs " in await r.read()
            monkeypatch.delenv("DOCKYARD_METRICS_TOKEN")
            async with aiohttp.ClientSession() as http:  # no token configured: no bearer opens it
                async with http.get(url, headers={"Authorization": "Bearer "}) as r:
                    assert r.status == 403
    finally:
        await runner.cleanup()
