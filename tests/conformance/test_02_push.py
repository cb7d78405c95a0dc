"""Push: streamed, monolithic (POST+PUT, single POST), chunked, mounts, manifests (spec: Push).

Every test runs with both clients (`mode`): one follows `Location` as an absolute URL,
one sends its path to the registry's host, as the OCI suite's client does.
"""

from __future__ import annotations

import pytest

from tests.conformance.client import Client
from tests.conformance.content import (INVALID_REFERENCE, OCI_INDEX, OCI_MANIFEST, Chunked, Content,
                                       digest)
from tests.conformance.helpers import (DELETED_OR_REFUSED, assert_blob, assert_error, get_blob, get_manifest,
                                       push_blob, put_manifest, repo_name)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def client(target, http, mode) -> Client:
    return target.client(http, mode)


@pytest.fixture
def repo() -> str:
    return repo_name("push")


def _pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


async def _start(client: Client, repo: str, **headers: str):
    reply = await client.request("POST", f"/v2/{repo}/blobs/uploads/", headers=headers or None)
    assert reply.status == 202, (reply.status, reply.body)
    assert reply.headers.get("Location"), "a session has a Location"
    return reply


async def _close(client: Client, session, blob: bytes, repo: str, **kwargs):
    """The closing PUT: 201, a pullable blob Location; the blob reads back byte for byte."""
    done = await client.request("PUT", client.location(session), params={"digest": digest(blob)}, **kwargs)
    assert done.status == 201, (done.status, done.body)
    assert_blob(await client.request("GET", client.location(done)), blob)
    assert_blob(await get_blob(client, repo, digest(blob)), blob)


async def test_streamed_upload(client, repo):
    blob = Content().blob_a

    async def stream():
        yield blob[:20]
        yield blob[20:]

    session = await _start(client, repo)
    patched = await client.request("PATCH", client.location(session), headers=OCTETS, data=stream)
    assert patched.status == 202, (patched.status, patched.body)
    assert patched.headers.get("Location")
    assert patched.headers.get("Range") == f"0-{len(blob) - 1}"
    await _close(client, patched, blob, repo, headers={**OCTETS, "Content-Length": "0"})


async def test_monolithic_post_then_put(client, repo):
    c = Content()
    assert (await get_blob(client, repo, c.dummy_digest)).status == 404
    for blob in (c.configs[1], c.layer):
        session = await _start(client, repo)
        await _close(client, session, blob, repo, headers=OCTETS, data=blob)


async def test_single_post(client, repo):
    """POST ?digest= with the bytes: 201 (supported) or 202 (not: the client PUTs next)."""
    blob = Content().configs[1]
    reply = await client.request("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": digest(blob)},
                                 headers=OCTETS, data=blob)
    assert reply.status in (201, 202), (reply.status, reply.body)
    assert reply.headers.get("Location")
    if reply.status == 201:
        assert_blob(await client.request("GET", client.location(reply)), blob)
        assert_blob(await get_blob(client, repo, digest(blob)), blob)
    else:
        assert (await get_blob(client, repo, digest(blob))).status == 404


async def test_single_post_falls_back_to_put(client, repo):
    """Whatever the single POST answered, a 202's Location takes the closing PUT."""
    blob = Content().configs[2]
    reply = await client.request("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": digest(blob)},
                                 headers=OCTETS, data=blob)
    if reply.status == 201:
        reply = await _start(client, repo)  # the registry took it at once; push it the other way too
    await _close(client, reply, blob, repo, headers=OCTETS, data=blob)


def _chunked_for(session) -> Chunked:
    """The test blob, grown so its first chunk meets the registry's OCI-Chunk-Min-Length."""
    chunked = Content().chunked
    minimum = int(session.headers.get("OCI-Chunk-Min-Length") or 0)
    return Chunked(chunked.blob * (minimum * 2 // len(chunked.blob) + 1)) if minimum > len(chunked.first) else chunked


def _chunk_headers(data: bytes, span: str) -> dict[str, str]:
    return {**OCTETS, "Content-Length": str(len(data)), "Content-Range": span}


async def test_out_of_order_chunk_is_416(client, repo):
    session = await _start(client, repo, **{"Content-Length": "0"})
    chunked = _chunked_for(session)
    reply = await client.request("PATCH", client.location(session), data=chunked.second,
                                 headers=_chunk_headers(chunked.second, chunked.second_range))
    assert reply.status == 416, (reply.status, reply.body)


async def test_416_body_is_the_spec_error_list(client, repo):
    """A JSON error body's code "MUST be one of" the spec's table, a 416's too."""
    session = await _start(client, repo, **{"Content-Length": "0"})
    chunked = _chunked_for(session)
    reply = await client.request("PATCH", client.location(session), data=chunked.second,
                                 headers=_chunk_headers(chunked.second, chunked.second_range))
    assert_error(reply, 416)


async def _first_chunk(client: Client, repo: str):
    session = await _start(client, repo, **{"Content-Length": "0"})
    chunked = _chunked_for(session)
    first = await client.request("PATCH", client.location(session), data=chunked.first,
                                 headers=_chunk_headers(chunked.first, chunked.first_range))
    assert first.status == 202, (first.status, first.body)
    assert first.headers.get("Location") and first.headers.get("Range") == chunked.first_range
    return session, first, chunked


async def test_chunked_upload(client, repo):
    _, first, chunked = await _first_chunk(client, repo)
    status = await client.request("GET", client.location(first))
    assert status.status == 204, (status.status, status.body)
    assert status.headers.get("Location") and status.headers.get("Range") == chunked.first_range
    second = await client.request("PATCH", client.location(status), data=chunked.second,
                                  headers=_chunk_headers(chunked.second, chunked.second_range))
    assert second.status == 202, (second.status, second.body)
    assert second.headers.get("Location") and second.headers.get("Range") == f"0-{len(chunked.blob) - 1}"
    await _close(client, second, chunked.blob, repo, headers={**OCTETS, "Content-Length": "0"})


async def test_chunk_retried_at_the_first_location(client, repo):
    """The suite retries the first chunk, and asks the status, at the POST's Location: 416, then 204."""
    session, _, chunked = await _first_chunk(client, repo)
    retried = await client.request("PATCH", client.location(session), data=chunked.first,
                                   headers=_chunk_headers(chunked.first, chunked.first_range))
    assert retried.status == 416, (retried.status, retried.body)
    status = await client.request("GET", client.location(session))
    assert status.status == 204, (status.status, status.body)
    assert status.headers.get("Location") and status.headers.get("Range") == chunked.first_range


async def test_chunked_last_chunk_in_put(client, repo):
    """"The final chunk MAY be uploaded ... in the closing PUT request"."""
    _, first, chunked = await _first_chunk(client, repo)
    await _close(client, first, chunked.blob, repo, data=chunked.second,
                 headers=_chunk_headers(chunked.second, chunked.second_range))


async def test_mount_of_unknown_blob_starts_a_session(client, seeder):
    """Mounting what no repository has: 202 and a session the client can use (GET: 204)."""
    cross = repo_name("crossmount")
    c = Content()
    for query in ({"mount": c.dummy_digest}, {"mount": c.dummy_digest, "from": repo_name("elsewhere")}):
        reply = await client.request("POST", f"/v2/{cross}/blobs/uploads/", params=query)
        assert reply.status == 202, (query, reply.status, reply.body)
        status = await client.request("GET", client.location(reply))
        assert status.status == 204, (status.status, status.body)


async def test_mount_from_another_repository(client, seeder, repo):
    blob, cross = Content().blob_a, repo_name("crossmount")
    await push_blob(seeder, repo, blob)
    # As docker does, ask for pull on the source too: a token for the target alone may not mount.
    reply = await client.request("POST", f"/v2/{cross}/blobs/uploads/", params={"mount": digest(blob), "from": repo},
                                 scopes=(_pull_scope(repo),))
    assert reply.status == 201, (reply.status, reply.body)
    assert client.location(reply).path == f"/v2/{cross}/blobs/{digest(blob)}"
    assert reply.headers.get("Docker-Content-Digest", digest(blob)) == digest(blob)
    assert_blob(await client.request("GET", client.location(reply)), blob)


async def test_mount_with_a_token_for_the_target_only(client, seeder, repo):
    """The suite's client asks only for the scope a challenge names, so it may not read the source:
    a registry that cannot mount then starts a session (202), whose path the suite wants under
    /v2/<name>/blobs/uploads/."""
    blob, cross = Content().blob_a, repo_name("crossmount")
    await push_blob(seeder, repo, blob)
    reply = await client.request("POST", f"/v2/{cross}/blobs/uploads/", params={"mount": digest(blob), "from": repo})
    assert reply.status in (201, 202), (reply.status, reply.body)
    if reply.status == 201:
        assert client.location(reply).path == f"/v2/{cross}/blobs/{digest(blob)}"
    else:
        assert client.location(reply).path.startswith(f"/v2/{cross}/blobs/uploads/"), reply.headers["Location"]


async def test_automatic_mount(client, seeder, target, repo):
    """Mount without `from`: 201 where the registry finds the blob itself (OCI_AUTOMATIC_CROSSMOUNT), else 202."""
    blob, cross = Content().blob_a, repo_name("crossmount")
    await push_blob(seeder, repo, blob)
    reply = await client.request("POST", f"/v2/{cross}/blobs/uploads/", params={"mount": digest(blob)},
                                 scopes=(_pull_scope(repo),))
    assert reply.status == (201 if target.automatic_crossmount else 202), (reply.status, reply.body)
    if reply.status == 201:
        assert_blob(await get_blob(client, cross, digest(blob)), blob)


async def _seed_image(seeder: Client, repo: str, c: Content, i: int) -> None:
    for blob in (c.configs[i], c.layer):
        await push_blob(seeder, repo, blob)


async def test_manifest_upload(client, seeder, repo):
    c = Content()
    await _seed_image(seeder, repo, c, 1)
    assert_error(await get_manifest(client, repo, INVALID_REFERENCE), 404)
    for i in range(4):
        reply = await put_manifest(client, repo, f"test{i}", c.manifests[1])
        assert reply.status == 201, (reply.status, reply.body)
        assert reply.headers.get("Docker-Content-Digest", digest(c.manifests[1])) == digest(c.manifests[1])
        pulled = await client.request("GET", client.location(reply), headers={"Accept": OCI_MANIFEST})
        assert pulled.status == 200 and pulled.body == c.manifests[1], "Location is a pullable manifest URL"
    got = await get_manifest(client, repo, digest(c.manifests[1]))
    assert got.status == 200 and got.body == c.manifests[1]
    tags = (await client.request("GET", f"/v2/{repo}/tags/list")).json()["tags"]
    assert sorted(tags) == [f"test{i}" for i in range(4)]  # their order: the discovery workflow


async def test_manifest_with_no_layers(client, seeder, repo):
    c = Content()
    await push_blob(seeder, repo, c.configs[1])
    reply = await put_manifest(client, repo, "emptylayer", c.empty_layer_manifest)
    assert reply.status == 201, (reply.status, reply.body)
    got = await get_manifest(client, repo, digest(c.empty_layer_manifest))
    assert got.status == 200 and got.body == c.empty_layer_manifest
    assert got.headers["Content-Type"].split(";")[0] == OCI_MANIFEST, "the type it was pushed as"


async def test_manifest_content_type_parameters(client, seeder, repo):
    """The registry SHOULD ignore parameters on a pushed Content-Type and SHOULD NOT send any back."""
    c = Content()
    await _seed_image(seeder, repo, c, 0)
    reply = await put_manifest(client, repo, "params", c.manifests[0], f"{OCI_MANIFEST}; charset=utf-8")
    assert reply.status == 201, (reply.status, reply.body)
    got = await get_manifest(client, repo, "params")
    assert got.status == 200 and got.body == c.manifests[0]
    assert got.headers["Content-Type"] == OCI_MANIFEST


async def test_manifest_with_subject_answers_oci_subject(client, seeder, repo):
    """A subject need not exist yet; a registry with the referrers API says it saw it (OCI-Subject)."""
    c = Content()
    for blob in (c.empty_json, c.ref_blob_a):
        await push_blob(seeder, repo, blob)
    for body, media_type in ((c.ref_a_config, OCI_MANIFEST), (c.ref_a_layer, OCI_MANIFEST), (c.ref_index, OCI_INDEX)):
        reply = await put_manifest(client, repo, digest(body), body, media_type)
        assert reply.status == 201, (reply.status, reply.body)
        assert reply.headers.get("OCI-Subject") == digest(c.manifests[4])


async def test_manifest_with_unknown_blob(client, repo):
    """A registry MAY refuse a manifest whose blobs it lacks; if it does, with MANIFEST_BLOB_UNKNOWN."""
    c = Content()
    reply = await put_manifest(client, repo, "broken", c.manifests[0])
    if reply.status != 201:
        assert_error(reply, 400, "MANIFEST_BLOB_UNKNOWN")


async def test_put_under_invalid_tag_is_refused(client, seeder, repo):
    c = Content()
    await _seed_image(seeder, repo, c, 0)
    assert_error(await put_manifest(client, repo, INVALID_REFERENCE, c.manifests[0]), (400, 404))


async def test_put_under_invalid_digest_is_400(client, seeder, repo):
    c = Content()
    await _seed_image(seeder, repo, c, 0)
    assert_error(await put_manifest(client, repo, "sha256:baddigeststring", c.manifests[0]), 400, "DIGEST_INVALID")


async def test_teardown_deletes(client, seeder, repo):
    c = Content()
    await _seed_image(seeder, repo, c, 1)
    assert (await put_manifest(seeder, repo, "test0", c.manifests[1])).status == 201
    assert (await client.request("DELETE", f"/v2/{repo}/manifests/{digest(c.manifests[1])}")).status \
        in DELETED_OR_REFUSED
    for blob in (c.configs[1], c.layer):
        assert (await client.request("DELETE", f"/v2/{repo}/blobs/{digest(blob)}")).status in DELETED_OR_REFUSED
