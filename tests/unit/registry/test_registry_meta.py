"""RegistryMeta against a real nats-server: tags, links, referrers, blob links, CAS protocol."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from shared.errors import Conflict, NotFound
from shared.oci.digest import Digest
from shared.registry_meta import ManifestLink, Referrer, RegistryMeta

D1 = Digest.from_bytes(b"one")
D2 = Digest.from_bytes(b"two")
D3 = Digest.from_bytes(b"three", "sha512")


@pytest.fixture
async def meta(nc):
    return await RegistryMeta.open(nc, suffix="-t" + uuid.uuid4().hex[:8])


def link(repo: str, digest: Digest, **kw) -> ManifestLink:
    return ManifestLink(repository=repo, digest=digest, media_type="application/vnd.oci.image.manifest.v1+json",
                        size=10, **kw)


async def test_tags_pages_and_moves(meta):
    for d in (D1, D2):
        await meta.put_manifest(link("a/b", d))
    for tag in ("v3", "v1", "v2", "latest", "1.0"):
        await meta.tag_manifest("a/b", tag, D1)
    assert await meta.list_tags("a/b") == ["1.0", "latest", "v1", "v2", "v3"]
    assert await meta.list_tags("a/b", n=2) == ["1.0", "latest"]
    assert await meta.list_tags("a/b", last="latest", n=2) == ["v1", "v2"]
    assert await meta.tag_manifest("a/b", "v1", D2) == D1
    assert await meta.get_tag("a/b", "v1") == D2
    # a repository whose name extends another's keeps its own tags
    await meta.put_manifest(link("a/b/c", D1))
    await meta.tag_manifest("a/b/c", "x", D1)
    assert await meta.list_tags("a/b/c") == ["x"]
    assert "x" not in await meta.list_tags("a/b")
    assert await meta.list_repositories() == ["a/b", "a/b/c"]
    assert await meta.list_repositories(last="a/b") == ["a/b/c"]


async def test_many_tags_list_from_keys_alone(meta):
    """More tags than are read one by one (the KV's watch path), some deleted: a tag list
    names the live ones only, in order, paged; `tags()` reads their digests together.
    The 60 tags are put at once: each bumps the one manifest's link by CAS, and every
    one of them lands (with a fixed retry interval the last ones failed with Conflict)."""
    await meta.put_manifest(link("many", D1))
    names = [f"t{i:03d}" for i in range(60)]
    await asyncio.gather(*(meta.tag_manifest("many", t, D1) for t in names))
    for t in names[::3]:
        await meta.delete_tag("many", t)
    live = [t for i, t in enumerate(names) if i % 3]
    assert await meta.list_tags("many") == live
    assert await meta.list_tags("many", last=live[10], n=5) == live[11:16]
    assert await meta.tags("many") == {t: D1 for t in live}


async def test_tag_requires_the_manifest(meta):
    with pytest.raises(NotFound):
        await meta.tag_manifest("r", "t", D1)
    assert await meta.get_tag("r", "t") is None


async def test_delete_manifest_removes_its_tags_and_referrer(meta):
    await meta.put_manifest(link("r", D1))
    await meta.put_manifest(link("r", D2, subject=D1))
    await meta.add_referrer("r", D1, Referrer(media_type="m", digest=D2, size=3, artifact_type="x/sig"))
    await meta.tag_manifest("r", "keep", D1)
    await meta.tag_manifest("r", "gone", D2)
    assert [r.digest for r in await meta.referrers("r", D1)] == [D2]
    removed = await meta.delete_manifest("r", D2)
    assert removed is not None and removed.digest == D2
    assert await meta.tags("r") == {"keep": D1}
    assert await meta.referrers("r", D1) == []
    assert await meta.delete_manifest("r", D2) is None


async def test_untagged_delete_refuses_a_tagged_or_changed_manifest(meta):
    await meta.put_manifest(link("r", D3))
    await meta.tag_manifest("r", "t", D3)
    with pytest.raises(Conflict):
        await meta.delete_untagged_manifest("r", D3)
    _, rev = await meta.get_manifest_rev("r", D3)
    await meta.tag_manifest("r", "u", D3)  # bumps the link
    with pytest.raises(Conflict):
        await meta.delete_manifest("r", D3, revision=rev)
    assert await meta.get_manifest("r", D3) is not None


async def test_manifests_iterates_all_or_one_repository(meta):
    await meta.put_manifest(link("x", D1, blobs=[D2]))
    await meta.put_manifest(link("y", D2))
    every = sorted((m.repository, m.digest) for m in [m async for m in meta.manifests()])
    assert every == [("x", D1), ("y", D2)]
    assert [m.blobs async for m in meta.manifests("x")] == [[D2]]


async def test_blob_links_and_uploads(meta):
    await meta.link_blob("r1", D1, 3)
    await meta.link_blob("r2", D1, 3)
    assert await meta.repositories_with_blob(D1) == ["r1", "r2"]
    assert (await meta.blob_link("r1", D1)).size == 3
    assert await meta.unlink_blob("r1", D1)
    assert not await meta.unlink_blob("r1", D1)
    assert await meta.blob_link("r1", D1) is None
    await meta.begin_upload("u1", "r1")
    assert await meta.upload_repository("u1") == "r1"
    await meta.end_upload("u1")
    assert await meta.upload_repository("u1") is None


async def test_two_clients_share_one_registry(meta, nats_url):
    from shared import bus
    nc2 = await bus.connect(nats_url)
    try:
        other = await RegistryMeta.open(nc2, suffix=meta._tags.kv._name.removeprefix("dockyard-tags"))
        await meta.put_manifest(link("shared", D1))
        await asyncio.gather(*(other.tag_manifest("shared", f"t{i}", D1) for i in range(5)))
        assert len(await meta.list_tags("shared")) == 5
    finally:
        await nc2.drain()


async def test_withdraw_only_at_the_revision_written_and_bump_reports_a_gone_link(meta):
    rev = await meta.put_manifest(link("w/x", D1))
    assert await meta.bump_manifest("w/x", D1)  # an index or a tag now names it
    assert not await meta.withdraw_manifest("w/x", D1, rev)
    assert await meta.get_manifest("w/x", D1) is not None
    _, rev = await meta.get_manifest_rev("w/x", D1)
    assert await meta.withdraw_manifest("w/x", D1, rev)
    assert await meta.get_manifest("w/x", D1) is None
    assert not await meta.bump_manifest("w/x", D1)
    assert await meta.get_manifest("w/x", D1) is None  # the bump does not recreate it
