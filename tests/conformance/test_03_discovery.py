"""Content discovery: tag listing with `n`, `last` and `Link`; referrers (spec: Content Discovery)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytest_asyncio

from tests.conformance.content import ANNOTATION, ARTIFACT_A, ARTIFACT_B, OCI_INDEX, OCI_MANIFEST, Content, digest
from tests.conformance.helpers import OK, assert_error, push_blob, put_manifest, repo_name

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
TAGS = [f"test{i}" for i in range(4)] + ["Upper", "tagtest0", "z_last"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def discovered(seeder):
    """The suite's set-up: tags on one image, then referrers pushed before and after their subject."""
    c, repo = Content(), repo_name("discovery")
    for blob in (c.configs[2], c.layer, c.empty_json, c.ref_blob_a):
        await push_blob(seeder, repo, blob)
    for tag in TAGS[:4] + TAGS[5:]:
        assert (await put_manifest(seeder, repo, tag, c.manifests[2])).status in OK
    subject_headers = {}
    for body, media_type in ((c.ref_a_config, OCI_MANIFEST), (c.ref_a_layer, OCI_MANIFEST), (c.ref_index, OCI_INDEX)):
        reply = await put_manifest(seeder, repo, digest(body), body, media_type)
        assert reply.status in OK, (reply.status, reply.body)
        subject_headers[digest(body)] = reply.headers.get("OCI-Subject")
    await push_blob(seeder, repo, c.configs[4])
    # The subject, under a tag; `Upper` sorts before the others in ASCII order, after them ignoring case.
    for tag in ("tagtest0", "Upper"):
        assert (await put_manifest(seeder, repo, tag, c.manifests[4])).status in OK
    await push_blob(seeder, repo, c.ref_blob_b)
    for body in (c.ref_b_config, c.ref_b_layer, c.ref_c_layer):
        reply = await put_manifest(seeder, repo, digest(body), body)
        assert reply.status in OK, (reply.status, reply.body)
        subject_headers[digest(body)] = reply.headers.get("OCI-Subject")
    return SimpleNamespace(c=c, repo=repo, subject_headers=subject_headers)


async def test_tags_list(seeder, discovered):
    reply = await seeder.request("GET", f"/v2/{discovered.repo}/tags/list")
    assert reply.status == 200
    got = reply.json()
    assert got["name"] == discovered.repo
    # "lexical" order: ASCII (Go's sort.Strings) or case-insensitive, as the spec allows since 1.1.1
    assert got["tags"] in (sorted(TAGS), sorted(TAGS, key=str.lower)), got["tags"]


async def _page(seeder, repo: str, **query: str):
    reply = await seeder.request("GET", f"/v2/{repo}/tags/list", params=query)
    assert reply.status == 200, (reply.status, reply.body)
    return reply.json()["tags"], reply


async def test_tags_n_and_last(seeder, discovered):
    repo = discovered.repo
    everything, _ = await _page(seeder, repo)
    n = len(everything) // 2
    first, _ = await _page(seeder, repo, n=str(n))
    assert first == everything[:n], "n limits the list, from its start"
    rest, _ = await _page(seeder, repo, n=str(n), last=first[-1])
    assert rest == everything[n:2 * n], "last: the tags after it, not including it"
    tail, reply = await _page(seeder, repo, last=everything[-2])
    assert tail == everything[-1:] and "Link" not in reply.headers


async def test_tags_n_zero_is_empty_without_link(seeder, discovered):
    tags, reply = await _page(seeder, discovered.repo, n="0")
    assert tags == [] and "Link" not in reply.headers


async def test_tags_link_walks_every_page(seeder, discovered):
    """A Link header MAY say where the next page is; if it does, following it yields every tag once."""
    everything, _ = await _page(seeder, discovered.repo)
    seen, reply = await _page(seeder, discovered.repo, n="3")
    while "Link" in reply.headers:
        link = reply.headers["Link"]
        assert link.startswith("<") and link.endswith('>; rel="next"'), link
        reply = await seeder.request("GET", seeder.resolve(link[1:link.index(">")], reply))
        assert reply.status == 200
        seen += reply.json()["tags"]
    assert seen == everything


async def test_tags_of_unknown_repository_is_404(seeder):
    assert_error(await seeder.request("GET", f"/v2/{repo_name('never-pushed')}/tags/list"), 404, "NAME_UNKNOWN")


def _index(reply) -> list[dict]:
    assert reply.status == 200, (reply.status, reply.body)
    assert reply.headers["Content-Type"] == OCI_INDEX
    got = reply.json()
    assert got["schemaVersion"] == 2 and got["mediaType"] == OCI_INDEX
    return got["manifests"]


async def test_manifest_with_subject_answers_oci_subject(discovered):
    c = discovered.c
    want = {digest(body): digest(c.manifests[4])
            for body in (c.ref_a_config, c.ref_a_layer, c.ref_index, c.ref_b_config, c.ref_b_layer)}
    want[digest(c.ref_c_layer)] = digest(c.manifests[3])
    assert discovered.subject_headers == want


async def test_referrers_of_unknown_digest_is_empty(seeder, discovered):
    assert _index(await seeder.request("GET", f"/v2/{discovered.repo}/referrers/{discovered.c.dummy_digest}")) == []


async def test_referrers_list(seeder, discovered):
    c = discovered.c
    found = _index(await seeder.request("GET", f"/v2/{discovered.repo}/referrers/{digest(c.manifests[4])}"))
    want = c.referrers_of_subject()
    assert sorted(m["digest"] for m in found) == sorted(want)
    for m in found:
        artifact_type, annotation = want[m["digest"]]
        assert m["artifactType"] == artifact_type, "artifactType, else the config's media type"
        assert m["annotations"] == {ANNOTATION: annotation}
        assert m["mediaType"] == (OCI_INDEX if m["digest"] == digest(c.ref_index) else OCI_MANIFEST)


async def test_referrers_filtered_by_artifact_type(seeder, discovered):
    c = discovered.c
    reply = await seeder.request("GET", f"/v2/{discovered.repo}/referrers/{digest(c.manifests[4])}",
                                 params={"artifactType": ARTIFACT_A})
    found = _index(reply)
    # Filtering is a SHOULD; a registry that filtered MUST say so.
    assert reply.headers.get("OCI-Filters-Applied") == "artifactType"
    assert sorted(m["digest"] for m in found) == sorted([digest(c.ref_a_config), digest(c.ref_a_layer)])
    unfiltered = await seeder.request("GET", f"/v2/{discovered.repo}/referrers/{digest(c.manifests[4])}",
                                      params={"artifactType": ARTIFACT_B + ".none"})
    assert _index(unfiltered) == []


async def test_referrers_of_a_subject_never_pushed(seeder, discovered):
    c = discovered.c
    found = _index(await seeder.request("GET", f"/v2/{discovered.repo}/referrers/{digest(c.manifests[3])}"))
    assert [m["digest"] for m in found] == [digest(c.ref_c_layer)]
    assert "annotations" not in found[0] or not found[0]["annotations"]


async def test_referrers_bad_digest_is_400(seeder, discovered):
    assert_error(await seeder.request("GET", f"/v2/{discovered.repo}/referrers/sha256:nothex"), 400)


async def test_referrers_drop_a_deleted_manifest(seeder, discovered):
    """A referrer is a manifest of the repository: once deleted, the list no longer names it."""
    c, repo = discovered.c, discovered.repo
    extra = c.ref_b_config.replace(b"test config b", b"test config b, deleted")
    assert (await put_manifest(seeder, repo, digest(extra), extra)).status == 201
    url = f"/v2/{repo}/referrers/{digest(c.manifests[4])}"
    assert digest(extra) in [m["digest"] for m in _index(await seeder.request("GET", url))]
    assert (await seeder.request("DELETE", f"/v2/{repo}/manifests/{digest(extra)}")).status == 202
    assert sorted(m["digest"] for m in _index(await seeder.request("GET", url))) == sorted(c.referrers_of_subject())


async def test_teardown_deletes(seeder, discovered):
    c, repo = discovered.c, discovered.repo
    for body in (c.ref_index, c.manifests[2], c.manifests[4], c.ref_a_config, c.ref_a_layer, c.ref_b_config,
                 c.ref_b_layer, c.ref_c_layer):
        reply = await seeder.request("DELETE", f"/v2/{repo}/manifests/{digest(body)}")
        assert reply.status in (202, 404, 405), (reply.status, reply.body)
    for blob in (c.configs[2], c.configs[4], c.layer, c.ref_blob_a, c.ref_blob_b, c.empty_json):
        reply = await seeder.request("DELETE", f"/v2/{repo}/blobs/{digest(blob)}")
        assert reply.status in (202, 404, 405), (reply.status, reply.body)
    reply = await seeder.request("GET", f"/v2/{repo}/tags/list")
    assert reply.status == 404 or (reply.status == 200 and not reply.json()["tags"]), \
        "deleting a manifest removes its tags"
