"""A registry that serves bytes other than the digest names: the client must refuse them."""

from __future__ import annotations

import pytest
from aiohttp import web

from shared.errors import InvalidArgument
from shared.oci import mediatypes as mt
from shared.oci.digest import Digest
from shared.registry import RegistryClient

GOOD = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
BAD = GOOD.replace(b"2", b"3")


@pytest.fixture
async def corrupting(aiohttp_server):
    async def manifest(request):
        return web.Response(body=BAD, content_type=mt.OCI_MANIFEST,
                            headers={"Docker-Content-Digest": str(Digest.from_bytes(GOOD))})

    async def blob(request):
        return web.Response(body=BAD)

    app = web.Application()
    app.router.add_get("/v2/{repo:.+}/manifests/{ref}", manifest)
    app.router.add_get("/v2/{repo:.+}/blobs/{digest}", blob)
    server = await aiohttp_server(app)
    return f"127.0.0.1:{server.port}"


async def test_corrupted_manifest_and_blob_are_refused(corrupting, session, tmp_path):
    c = RegistryClient(session, corrupting)
    good = Digest.from_bytes(GOOD)
    with pytest.raises(InvalidArgument, match="digest"):
        await c.get_manifest("a/b", "latest")  # against the registry's own digest header
    with pytest.raises(InvalidArgument, match="digest"):
        await c.get_manifest("a/b", str(good))  # against the digest asked for
    with pytest.raises(InvalidArgument):
        await c.fetch_blob_to("a/b", good, tmp_path / "blob")
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
