"""RegistryClient against a real CNCF registry: push, pull, verify, mount, list, delete, auth."""

from __future__ import annotations

import os

import pytest

from shared.errors import InvalidArgument, NotFound, Unauthenticated
from shared.oci import mediatypes as mt
from shared.oci.digest import Digest
from shared.registry import Credentials, RegistryClient
from shared.registry.client import MONOLITHIC_MAX


async def push_image(c: RegistryClient, repo: str, tag: str, manifest: bytes, blobs: dict) -> Digest:
    for d, b in blobs.items():
        assert await c.push_blob(repo, d, len(b), b) == "uploaded"
    return await c.put_manifest(repo, tag, manifest, mt.OCI_MANIFEST)


async def test_push_pull_round_trip(cncf_registry, session, make_image, tmp_path):
    reg = cncf_registry()
    c = RegistryClient(session, reg.addr)
    assert str(c.base_url) == f"http://{reg.addr}"
    await c.ping()
    big = os.urandom(MONOLITHIC_MAX + 123_457)  # the streamed PATCH path
    manifest, blobs = make_image([b"small layer", big])
    digest = await push_image(c, "dyau/app", "v1", manifest, blobs)
    assert digest == Digest.from_bytes(manifest)

    got = await c.get_manifest("dyau/app", "v1")
    assert got == (mt.OCI_MANIFEST, digest, manifest)
    assert (await c.get_manifest("dyau/app", str(digest))).body == manifest
    head = await c.head_manifest("dyau/app", "v1")
    assert head.digest == digest and head.size == len(manifest)
    assert await c.head_manifest("dyau/app", "nope") is None
    with pytest.raises(NotFound):
        await c.get_manifest("dyau/app", "nope")

    big_digest = Digest.from_bytes(big)
    assert await c.blob_exists("dyau/app", big_digest) == len(big)
    assert await c.push_blob("dyau/app", big_digest, len(big), big) == "exists"
    async with c.open_blob("dyau/app", big_digest) as stream:
        assert b"".join([chunk async for chunk in stream]) == big
    dest = tmp_path / "blob"
    assert await c.fetch_blob_to("dyau/app", big_digest, dest) == len(big)
    assert dest.read_bytes() == big and os.listdir(tmp_path) == ["blob"]

    # Same registry: mounted from the other repository, not uploaded again.
    assert await c.push_blob("dyau/other", big_digest, len(big), lambda: _never(), mount_from="dyau/app") == "mounted"
    assert await c.blob_exists("dyau/other", big_digest) == len(big)

    await c.put_manifest("dyau/app", "v2", manifest, mt.OCI_MANIFEST)
    assert sorted(await c.list_tags("dyau/app")) == ["v1", "v2"]
    assert {"dyau/app", "dyau/other"} <= set(await c.catalog())
    await c.delete_manifest("dyau/app", digest)
    assert await c.head_manifest("dyau/app", "v1") is None


async def _never():
    raise AssertionError("a mounted blob must not be read")
    yield b""  # pragma: no cover


async def test_wrong_digest_is_refused_and_nothing_stored(cncf_registry, session):
    reg = cncf_registry()
    c = RegistryClient(session, reg.addr)
    wrong = Digest.from_bytes(b"other bytes")
    with pytest.raises(InvalidArgument):
        await c.push_blob("dyau/app", wrong, 5, b"bytes")
    assert await c.blob_exists("dyau/app", wrong) is None
    with pytest.raises(InvalidArgument):
        await c.put_manifest("dyau/app", str(wrong), b"{}", mt.OCI_MANIFEST)


async def test_streamed_upload_from_a_file(cncf_registry, session, tmp_path):
    reg = cncf_registry()
    c = RegistryClient(session, reg.addr)
    data = os.urandom(MONOLITHIC_MAX * 2 + 1)
    f = tmp_path / "layer"
    f.write_bytes(data)
    d = Digest.from_bytes(data)
    assert await c.push_blob("dyau/file", d, len(data), str(f)) == "uploaded"
    async with c.open_blob("dyau/file", d) as stream:
        assert stream.size == len(data)
        n = 0
        async for chunk in stream:
            n += len(chunk)
    assert n == len(data)


async def test_basic_auth_registry(cncf_registry, session, make_image):
    reg = cncf_registry(users={"dyau": "dyaupw"})
    with pytest.raises(Unauthenticated):
        await RegistryClient(session, reg.addr).ping()
    with pytest.raises(Unauthenticated):
        await RegistryClient(session, reg.addr, credentials=Credentials("dyau", "bad")).ping()
    c = RegistryClient(session, reg.addr, credentials=("dyau", "dyaupw"))
    await c.ping()
    manifest, blobs = make_image([b"layer"])
    d = await push_image(c, "dyau/basic", "v1", manifest, blobs)
    assert (await c.get_manifest("dyau/basic", "v1")).digest == d
