"""Pull: blobs and manifests by digest and tag, HEAD and GET, and the 404s (spec: Pull)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytest_asyncio

from tests.conformance.content import INVALID_REFERENCE, OCI_MANIFEST, Content, digest
from tests.conformance.helpers import (DELETED_OR_REFUSED, OK, assert_blob, assert_error, get_blob,
                                       get_manifest, push_blob, put_manifest, repo_name)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
TAG = "tagtest0"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pulled(seeder):
    """The suite's pull set-up: two configs and the layer, one manifest by tag, one by digest."""
    c, repo = Content(), repo_name("pull")
    for blob in (c.configs[0], c.configs[1], c.layer):
        await push_blob(seeder, repo, blob)
    assert (await put_manifest(seeder, repo, TAG, c.manifests[0])).status in OK
    assert (await put_manifest(seeder, repo, digest(c.manifests[1]), c.manifests[1])).status in OK
    tags = (await seeder.request("GET", f"/v2/{repo}/tags/list")).json()["tags"]
    return SimpleNamespace(c=c, repo=repo, tag=tags[0])


async def test_api_version_check(seeder, http, target):
    """`GET /v2/`: 200, or 401 with a challenge to someone who has not authenticated."""
    async with http.get(f"{target.url}/v2/") as anonymous:
        assert anonymous.status in (200, 401)
        if anonymous.status == 401:
            assert anonymous.headers["WWW-Authenticate"].split()[0] in ("Bearer", "Basic")
    assert (await seeder.request("GET", "/v2/")).status == 200


async def test_head_blob(seeder, pulled):
    c, repo = pulled.c, pulled.repo
    missing = await get_blob(seeder, repo, c.dummy_digest, "HEAD")
    assert missing.status == 404 and missing.body == b""
    found = await get_blob(seeder, repo, digest(c.configs[0]), "HEAD")
    assert found.status == 200 and found.body == b""
    assert found.headers.get("Docker-Content-Digest", digest(c.configs[0])) == digest(c.configs[0])
    assert found.headers["Content-Length"] == str(len(c.configs[0]))


async def test_get_blob(seeder, pulled):
    c, repo = pulled.c, pulled.repo
    assert_error(await get_blob(seeder, repo, c.dummy_digest), 404, "BLOB_UNKNOWN")
    assert_blob(await get_blob(seeder, repo, digest(c.configs[0])), c.configs[0])
    assert_blob(await get_blob(seeder, repo, digest(c.layer)), c.layer)


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_manifest_not_found(seeder, pulled, method):
    repo = pulled.repo
    for reference in (INVALID_REFERENCE, "nosuchtag", pulled.c.dummy_digest):
        reply = await get_manifest(seeder, repo, reference, method)
        assert_error(reply, 404, "MANIFEST_UNKNOWN" if method == "GET" else None)
    # "An attempt to pull a nonexistent repository MUST return response code 404"
    assert (await get_manifest(seeder, repo_name("never-pushed"), TAG, method)).status == 404


async def test_head_manifest(seeder, pulled):
    c, repo = pulled.c, pulled.repo
    for reference, body in ((digest(c.manifests[0]), c.manifests[0]), (digest(c.manifests[1]), c.manifests[1]),
                            (pulled.tag, c.manifests[0])):
        reply = await get_manifest(seeder, repo, reference, "HEAD")
        assert reply.status == 200 and reply.body == b""
        assert reply.headers.get("Docker-Content-Digest", digest(body)) == digest(body)
        assert reply.headers["Content-Length"] == str(len(body))


async def test_get_manifest(seeder, pulled):
    c, repo = pulled.c, pulled.repo
    for reference, body in ((digest(c.manifests[0]), c.manifests[0]), (digest(c.manifests[1]), c.manifests[1]),
                            (pulled.tag, c.manifests[0])):
        reply = await get_manifest(seeder, repo, reference)
        assert reply.status == 200
        assert reply.body == body, "the exact bytes pushed"
        assert reply.headers["Content-Type"].split(";")[0] == OCI_MANIFEST
        assert reply.headers.get("Docker-Content-Digest", digest(body)) == digest(body)


async def test_bad_digest_reference_is_400_or_404(seeder, pulled):
    reply = await seeder.request("GET", f"/v2/{pulled.repo}/manifests/sha256:totallywrong",
                                 headers={"Content-Type": OCI_MANIFEST}, data=b"blablabla")
    assert_error(reply, (400, 404))


async def test_teardown_deletes(seeder, pulled):
    c, repo = pulled.c, pulled.repo
    for m in c.manifests[:2]:
        assert (await seeder.request("DELETE", f"/v2/{repo}/manifests/{digest(m)}")).status in DELETED_OR_REFUSED
    for blob in (c.configs[0], c.configs[1], c.layer):
        assert (await seeder.request("DELETE", f"/v2/{repo}/blobs/{digest(blob)}")).status in DELETED_OR_REFUSED
