"""Content management: deleting a tag, a manifest, blobs (spec: Content Management).

Deletion MAY be disabled: a tag delete is then 400 UNSUPPORTED or 405, a manifest or
blob delete 405. Where a delete is accepted (202), what it removed answers 404 after.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytest_asyncio

from tests.conformance.content import Content, digest
from tests.conformance.helpers import OK, assert_error, get_blob, get_manifest, push_blob, put_manifest, repo_name

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
TAG = "tagtest0"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def managed(seeder):
    c, repo = Content(), repo_name("management")
    for blob in (c.configs[3], c.layer):
        await push_blob(seeder, repo, blob)
    for tag in (TAG, "keep"):
        assert (await put_manifest(seeder, repo, tag, c.manifests[3])).status in OK
    tags = (await seeder.request("GET", f"/v2/{repo}/tags/list")).json()["tags"]
    return SimpleNamespace(c=c, repo=repo, tags=tags)


async def _tags(seeder, repo: str) -> list[str]:
    reply = await seeder.request("GET", f"/v2/{repo}/tags/list")
    assert reply.status == 200, (reply.status, reply.body)
    return reply.json()["tags"] or []


async def test_delete_tag(seeder, managed):
    repo = managed.repo
    reply = await seeder.request("DELETE", f"/v2/{repo}/manifests/{TAG}")
    assert reply.status in (202, 400, 405), (reply.status, reply.body)
    if reply.status == 400:
        assert_error(reply, 400, "UNSUPPORTED")
    if reply.status == 202:
        assert_error(await get_manifest(seeder, repo, TAG), 404, "MANIFEST_UNKNOWN")
        assert sorted(await _tags(seeder, repo)) == ["keep"]
        got = await get_manifest(seeder, repo, digest(managed.c.manifests[3]))
        assert got.status == 200, "deleting a tag leaves the manifest"


async def test_delete_manifest(seeder, managed):
    repo, manifest = managed.repo, managed.c.manifests[3]
    reply = await seeder.request("DELETE", f"/v2/{repo}/manifests/{digest(manifest)}")
    assert reply.status in (202, 404), (reply.status, reply.body)
    after = await get_manifest(seeder, repo, digest(manifest))
    assert after.status in (404, 200)
    if reply.status == 202:
        assert_error(after, 404, "MANIFEST_UNKNOWN")
    assert len(await _tags(seeder, repo)) < len(managed.tags), "the tags list reflects the deletion"
    again = await seeder.request("DELETE", f"/v2/{repo}/manifests/{digest(manifest)}")
    assert_error(again, 404, "MANIFEST_UNKNOWN")


async def test_delete_blobs(seeder, managed):
    c, repo = managed.c, managed.repo
    for blob in (c.configs[3], c.layer):
        reply = await seeder.request("DELETE", f"/v2/{repo}/blobs/{digest(blob)}")
        assert reply.status in (202, 404, 405), (reply.status, reply.body)
        if reply.status == 202:
            assert_error(await get_blob(seeder, repo, digest(blob)), 404, "BLOB_UNKNOWN")
            assert (await get_blob(seeder, repo, digest(blob), "HEAD")).status == 404
    assert_error(await seeder.request("DELETE", f"/v2/{repo}/blobs/{c.dummy_digest}"), 404, "BLOB_UNKNOWN")


async def test_blob_deleted_in_one_repository_stays_in_another(seeder):
    """A blob is deleted from a repository, not from the registry: another that has it still serves it."""
    blob, first, second = Content().blob_a, repo_name("management"), repo_name("management")
    for repo in (first, second):
        await push_blob(seeder, repo, blob)
    reply = await seeder.request("DELETE", f"/v2/{first}/blobs/{digest(blob)}")
    assert reply.status in (202, 405), (reply.status, reply.body)
    got = await get_blob(seeder, second, digest(blob))
    assert got.status == 200 and got.body == blob
