"""Direct uploads and blob redirects: the gateway hands out signed layer-store URLs (its own
paths, on the layer-store's listener), the layer-store asks the gateway (over the bus) to
take the committed blob, and the blob is linked into the session's repository only. A
client that keeps only the path of those URLs is served by the gateway instead. Real
layer-store service, real NATS, real HTTP."""

from __future__ import annotations

import contextlib
import os

import pytest
import pytest_asyncio
from aiohttp import web
from yarl import URL

from shared import bus
from services.registry_gateway import blobs
from services.registry_gateway.app import create_app
from services.registry_gateway.authz import AllowAll
from services.registry_gateway.keys import REGISTRY
from tests.unit.registry.ocidata import OCI_MANIFEST, digest

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO = "dyrp/direct"
LAYER = os.urandom(5 << 20)  # more than one write batch in the layer-store
CONFIG = b'{"architecture": "amd64", "os": "linux"}'


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(module_nc, suffix, layer_store, dataplane_signer):
    """A gateway with direct uploads and blob redirects on, and its commit hook on the bus
    (as the service has)."""
    hook = "dyrp.test.upload.committed" + suffix
    app = create_app(module_nc, AllowAll(), signer=dataplane_signer, meta_suffix=suffix,
                     direct_upload="on", blob_redirect="on", upload_hook=hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    service = bus.BusService(module_nc, "dyrp-test-gateway")
    blobs.register_upload_hook(service, app[REGISTRY], hook)
    await service.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        with contextlib.suppress(Exception):
            await service.stop()
        await runner.cleanup()


async def start(http, gateway: str, repo: str = REPO) -> str:
    async with http.post(f"{gateway}/v2/{repo}/blobs/uploads/") as r:
        assert r.status == 202, await r.text()
        return r.headers["Location"]


async def blob_status(http, gateway: str, repo: str, d: str) -> int:
    async with http.head(f"{gateway}/v2/{repo}/blobs/{d}") as r:
        return r.status


async def test_location_is_the_layer_store(http, gateway, layer_store):
    location = URL(await start(http, gateway))
    assert (location.host, location.port) == (URL(layer_store).host, URL(layer_store).port)
    assert location.path.startswith(f"/v2/{REPO}/blobs/uploads/") and {"exp", "sig"} <= set(location.query)


async def test_a_client_that_keeps_only_the_path_uploads_through_the_gateway(http, gateway):
    data = os.urandom(300_000)
    location = URL(await start(http, gateway))
    path_only = URL(gateway).join(URL(location.path_qs, encoded=True))
    async with http.patch(path_only, data=data[:1000], headers={"Content-Range": "0-999"}) as r:
        assert r.status == 202, await r.text()
        nxt = URL(gateway).join(URL(r.headers["Location"], encoded=True))
    # the direct URL still works for the same session, at its new size
    async with http.patch(location, data=data[1000:], headers={"Content-Range": f"1000-{len(data) - 1}"}) as r:
        assert r.status == 202, await r.text()
    async with http.put(nxt, params={"digest": digest(data)}) as r:
        assert r.status == 201, await r.text()
    assert await blob_status(http, gateway, REPO, digest(data)) == 200


async def test_a_direct_upload_url_opens_nothing_else(http, gateway, layer_store):
    location = URL(await start(http, gateway))
    unsigned = location.with_query(None)
    async with http.patch(unsigned, data=b"x") as r:
        assert r.status == 403 and (await r.json())["errors"][0]["code"] == "DENIED"
    other = location.with_path(location.path.replace(REPO, "dyrp/other"))  # same signature
    async with http.patch(other, data=b"x") as r:
        assert r.status == 403
    own_route = URL(layer_store).join(URL(f"/uploads/{location.name}")).with_query(location.query)
    async with http.get(own_route) as r:
        assert r.status == 403, "a session URL is not a key to the layer-store's own routes"


async def test_blob_redirect_works_followed_or_resolved_by_path(http, gateway):
    data = os.urandom(200_000)
    location = await start(http, gateway)
    async with http.put(location, params={"digest": digest(data)}, data=data) as r:
        assert r.status == 201, await r.text()
    url = f"{gateway}/v2/{REPO}/blobs/{digest(data)}"
    async with http.get(url, allow_redirects=False) as r:
        assert r.status == 307
        target = URL(r.headers["Location"])
    assert target.path == f"/v2/{REPO}/blobs/{digest(data)}" and target.port != URL(gateway).port
    async with http.get(target, allow_redirects=False) as r:
        assert r.status == 200 and await r.read() == data
    async with http.get(target, headers={"Range": "bytes=10-19"}) as r:
        assert r.status == 206 and await r.read() == data[10:20]
    async with http.get(URL(gateway).join(URL(target.path_qs, encoded=True)), allow_redirects=False) as r:
        assert r.status == 200 and await r.read() == data, "streamed, not sent round again"
    async with http.get(target.with_query(None)) as r:
        assert r.status == 403
    async with http.get(url) as r:  # followed by the client itself
        assert r.status == 200 and await r.read() == data


async def test_chunked_direct_upload_is_linked_into_its_repository_only(http, gateway):
    location = await start(http, gateway)
    half = len(LAYER) // 2
    async with http.patch(location, data=LAYER[:half], headers={"Content-Range": f"0-{half - 1}"}) as r:
        assert r.status == 202 and r.headers["Range"] == f"0-{half - 1}"
        location = str(URL(location).join(URL(r.headers["Location"])))
    async with http.patch(location, data=LAYER[half:]) as r:
        assert r.status == 202 and r.headers["Range"] == f"0-{len(LAYER) - 1}"
    d = digest(LAYER)
    assert await blob_status(http, gateway, REPO, d) == 404, "not linked before the commit"
    async with http.put(location, params={"digest": d}) as r:
        assert r.status == 201, await r.text()
        assert r.headers["Location"] == f"{gateway}/v2/{REPO}/blobs/{d}"
        assert r.headers["Docker-Content-Digest"] == d
    assert await blob_status(http, gateway, REPO, d) == 200
    assert await blob_status(http, gateway, "dyrp/other", d) == 404
    async with http.get(f"{gateway}/v2/{REPO}/blobs/{d}") as r:
        assert r.status == 200 and await r.read() == LAYER
    # the session is over, on both URLs
    async with http.get(location) as r:
        assert r.status == 404
    async with http.get(f"{gateway}/v2/{REPO}/blobs/uploads/{URL(location).name}") as r:
        assert r.status == 404


async def test_an_upload_continued_through_the_gateway_after_a_direct_chunk(http, gateway):
    data = os.urandom(300_000)
    location = await start(http, gateway)
    upload_id = URL(location).name
    async with http.patch(location, data=data[:100_000], headers={"Content-Range": "0-99999"}) as r:
        assert r.status == 202
    own = f"{gateway}/v2/{REPO}/blobs/uploads/{upload_id}"
    async with http.get(own) as r:
        assert r.status == 204 and r.headers["Range"] == "0-99999"
    async with http.patch(own, data=data[100_000:], headers={"Content-Range": f"100000-{len(data) - 1}"}) as r:
        assert r.status == 202, await r.text()
    # not under another repository, though
    async with http.put(f"{gateway}/v2/dyrp/other/blobs/uploads/{upload_id}", params={"digest": digest(data)}) as r:
        assert r.status == 404
    async with http.put(own, params={"digest": digest(data)}) as r:
        assert r.status == 201, await r.text()
    assert await blob_status(http, gateway, REPO, digest(data)) == 200


async def test_monolithic_put_then_a_manifest_referring_to_it(http, gateway):
    layer = os.urandom(1 << 20)  # its own: the chunked test must find its layer unlinked, in any order
    for blob in (layer, CONFIG):
        location = await start(http, gateway)
        async with http.put(location, params={"digest": digest(blob)}, data=blob) as r:
            assert r.status == 201, await r.text()
    manifest = (b'{"schemaVersion": 2, "mediaType": "%s", "config": {"mediaType": '
                b'"application/vnd.oci.image.config.v1+json", "digest": "%s", "size": %d}, "layers": '
                b'[{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "%s", "size": %d}]}'
                % (OCI_MANIFEST.encode(), digest(CONFIG).encode(), len(CONFIG), digest(layer).encode(), len(layer)))
    async with http.put(f"{gateway}/v2/{REPO}/manifests/v1", data=manifest,
                        headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 201, await r.text()
    # the same blobs pushed to another repository's session: a manifest there needs its own upload
    async with http.put(f"{gateway}/v2/dyrp/other/manifests/v1", data=manifest,
                        headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 400 and "MANIFEST_BLOB_UNKNOWN" in await r.text()


async def test_a_wrong_digest_links_nothing(http, gateway):
    location = await start(http, gateway)
    async with http.put(location, params={"digest": digest(b"something else")}, data=b"the bytes") as r:
        assert r.status == 400 and (await r.json())["errors"][0]["code"] == "DIGEST_INVALID"
    assert await blob_status(http, gateway, REPO, digest(b"something else")) == 404
    assert await blob_status(http, gateway, REPO, digest(b"the bytes")) == 404
