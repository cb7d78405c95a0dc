"""Every OCI distribution endpoint of the gateway, as a table, against the real layer-store."""

from __future__ import annotations

import json
import os

import pytest
import pytest_asyncio

from tests.conformance.content import SPEC_CODES
from tests.unit.registry.ocidata import (DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Image, artifact, digest,
                                         index, push_blob, push_image, push_manifest)

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO = "dyrg/app"
SIG = "application/vnd.dyrg.signature"
MISSING = digest(b"never pushed")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def seeded(http, registry_url):
    """One repository with an OCI image, a Docker image, an index and a referrer."""
    img, docker_img = Image(), Image(created="2023-01-01T00:00:00Z")
    v: dict[str, object] = {"img": img}
    v["manifest"] = await push_image(http, registry_url, REPO, "v1", img)
    v["docker"] = await push_image(http, registry_url, REPO, "v2s2", docker_img, docker=True)
    v["index"] = await push_manifest(http, registry_url, REPO, "multi", index(img.manifest()), OCI_INDEX)
    await push_blob(http, registry_url, REPO, b"{}")
    sig = artifact(img.manifest(), SIG, {"org.example": "yes"})
    async with http.put(f"{registry_url}/v2/{REPO}/manifests/{digest(sig)}", data=sig,
                        headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 201
        v["oci_subject"] = r.headers.get("OCI-Subject")
    v["sig"] = digest(sig)
    v["layer"], v["config"] = digest(img.layer), digest(img.config)
    v["layer_size"] = len(img.layer)
    v["sha512"] = await push_blob(http, registry_url, REPO, b"sha512 bytes", "sha512")
    await push_blob(http, registry_url, "dyrg/second", b"a second repository")
    return v


def blob_manifest(layer_digest: str, size: int, config: str, config_size: int) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                                  "size": config_size},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                                   "size": size}]}).encode()


# (id, method, path, request headers, body, status, expected headers (None: must be present), OCI code)
CASES = [
    ("base", "GET", "/v2/", {}, None, 200, {"Docker-Distribution-API-Version": "registry/2.0"}, None),
    ("blob-head", "HEAD", "/v2/{repo}/blobs/{layer}", {}, None, 200,
     {"Content-Length": "{layer_size}", "Docker-Content-Digest": "{layer}"}, None),
    ("blob-get", "GET", "/v2/{repo}/blobs/{layer}", {}, None, 200, {"Content-Length": "{layer_size}"}, None),
    ("blob-range", "GET", "/v2/{repo}/blobs/{layer}", {"Range": "bytes=10-19"}, None, 206,
     {"Content-Length": "10", "Content-Range": "bytes 10-19/{layer_size}"}, None),
    ("blob-range-unsatisfiable", "GET", "/v2/{repo}/blobs/{layer}", {"Range": "bytes=99999999-"}, None, 416,
     {}, "RANGE_INVALID"),
    ("blob-sha512", "GET", "/v2/{repo}/blobs/{sha512}", {}, None, 200, {"Content-Length": "12"}, None),
    ("blob-unknown", "GET", "/v2/{repo}/blobs/{missing}", {}, None, 404, {}, "BLOB_UNKNOWN"),
    ("blob-head-unknown", "HEAD", "/v2/{repo}/blobs/{missing}", {}, None, 404, {}, None),
    ("blob-other-repo", "GET", "/v2/dyrg/other/blobs/{layer}", {}, None, 404, {}, "BLOB_UNKNOWN"),
    ("blob-bad-digest", "GET", "/v2/{repo}/blobs/sha256:xyz", {}, None, 400, {}, "DIGEST_INVALID"),
    ("blob-bad-algorithm", "GET", "/v2/{repo}/blobs/md5:abcd", {}, None, 400, {}, "DIGEST_INVALID"),
    ("blob-bad-name", "GET", "/v2/Dyrg/UPPER/blobs/{layer}", {}, None, 400, {}, "NAME_INVALID"),
    ("blob-put-unsupported", "PUT", "/v2/{repo}/blobs/{layer}", {}, b"", 405, {}, "UNSUPPORTED"),
    ("manifest-get-tag", "GET", "/v2/{repo}/manifests/v1", {"Accept": OCI_MANIFEST}, None, 200,
     {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": "{manifest}"}, None),
    ("manifest-head-digest", "HEAD", "/v2/{repo}/manifests/{manifest}", {}, None, 200,
     {"Content-Type": OCI_MANIFEST, "Content-Length": None}, None),
    ("manifest-docker", "GET", "/v2/{repo}/manifests/v2s2", {"Accept": DOCKER_MANIFEST}, None, 200,
     {"Content-Type": DOCKER_MANIFEST, "Docker-Content-Digest": "{docker}"}, None),
    ("manifest-index", "GET", "/v2/{repo}/manifests/multi", {}, None, 200, {"Content-Type": OCI_INDEX}, None),
    ("manifest-not-acceptable", "GET", "/v2/{repo}/manifests/v1", {"Accept": DOCKER_MANIFEST}, None, 404, {},
     "MANIFEST_UNKNOWN"),
    ("manifest-unknown-tag", "GET", "/v2/{repo}/manifests/nope", {}, None, 404, {}, "MANIFEST_UNKNOWN"),
    ("manifest-unknown-repo", "GET", "/v2/dyrg/none/manifests/v1", {}, None, 404, {}, "MANIFEST_UNKNOWN"),
    # A reference that is neither a tag nor a digest names no manifest: 404 to read or delete it
    # (the OCI suite's `.INVALID_MANIFEST_NAME`), 400 to push under it.
    ("manifest-bad-tag", "GET", "/v2/{repo}/manifests/-bad", {}, None, 404, {}, "MANIFEST_UNKNOWN"),
    ("manifest-bad-digest", "GET", "/v2/{repo}/manifests/sha256:123", {}, None, 404, {}, "MANIFEST_UNKNOWN"),
    ("manifest-invalid-name", "GET", "/v2/{repo}/manifests/.INVALID_MANIFEST_NAME", {}, None, 404, {},
     "MANIFEST_UNKNOWN"),
    ("manifest-head-invalid-name", "HEAD", "/v2/{repo}/manifests/.INVALID_MANIFEST_NAME", {}, None, 404, {}, None),
    ("manifest-delete-invalid-name", "DELETE", "/v2/{repo}/manifests/.INVALID_MANIFEST_NAME", {}, None, 404, {},
     "MANIFEST_UNKNOWN"),
    ("manifest-put-invalid-name", "PUT", "/v2/{repo}/manifests/.INVALID_MANIFEST_NAME",
     {"Content-Type": OCI_MANIFEST}, "valid_manifest", 400, {}, "MANIFEST_INVALID"),
    ("manifest-put-non-ascii-tag", "PUT", "/v2/{repo}/manifests/t%C3%A9", {"Content-Type": OCI_MANIFEST},
     "valid_manifest", 400, {}, "MANIFEST_INVALID"),
    ("manifest-put-newline-tag", "PUT", "/v2/{repo}/manifests/v1%0A", {"Content-Type": OCI_MANIFEST},
     "valid_manifest", 400, {}, "MANIFEST_INVALID"),
    ("manifest-put-bad-digest", "PUT", "/v2/{repo}/manifests/sha256:baddigeststring",
     {"Content-Type": OCI_MANIFEST}, "valid_manifest", 400, {}, "DIGEST_INVALID"),
    ("manifest-put-bad-json", "PUT", "/v2/{repo}/manifests/bad", {"Content-Type": OCI_MANIFEST}, b"{not json",
     400, {}, "MANIFEST_INVALID"),
    ("manifest-put-missing-blob", "PUT", "/v2/{repo}/manifests/broken", {"Content-Type": OCI_MANIFEST},
     "missing_blob_manifest", 400, {}, "MANIFEST_BLOB_UNKNOWN"),
    ("manifest-put-wrong-size", "PUT", "/v2/{repo}/manifests/wrongsize", {"Content-Type": OCI_MANIFEST},
     "wrong_size_manifest", 400, {}, "MANIFEST_INVALID"),
    ("manifest-put-wrong-digest", "PUT", "/v2/{repo}/manifests/{missing}", {"Content-Type": OCI_MANIFEST},
     "valid_manifest", 400, {}, "DIGEST_INVALID"),
    ("manifest-put-oversized", "PUT", "/v2/{repo}/manifests/big", {"Content-Type": OCI_MANIFEST},
     b" " * (4 * 1024 * 1024 + 1), 413, {}, "SIZE_INVALID"),
    ("manifest-put-bad-name", "PUT", "/v2/a//b/manifests/x", {"Content-Type": OCI_MANIFEST}, b"{}", 400, {},
     "NAME_INVALID"),
    ("tags", "GET", "/v2/{repo}/tags/list", {}, None, 200, {"Content-Type": "application/json"}, None),
    ("tags-page", "GET", "/v2/{repo}/tags/list?n=1", {}, None, 200,
     {"Link": '</v2/{repo}/tags/list?n=1&last=multi>; rel="next"'}, None),
    ("tags-bad-n", "GET", "/v2/{repo}/tags/list?n=x", {}, None, 400, {}, "PAGINATION_NUMBER_INVALID"),
    ("tags-unknown-repo", "GET", "/v2/dyrg/none/tags/list", {}, None, 404, {}, "NAME_UNKNOWN"),
    ("referrers", "GET", "/v2/{repo}/referrers/{manifest}", {}, None, 200, {"Content-Type": OCI_INDEX}, None),
    ("referrers-filtered", "GET", f"/v2/{{repo}}/referrers/{{manifest}}?artifactType={SIG}", {}, None, 200,
     {"OCI-Filters-Applied": "artifactType"}, None),
    ("referrers-bad-digest", "GET", "/v2/{repo}/referrers/nope", {}, None, 400, {}, "DIGEST_INVALID"),
    ("catalog", "GET", "/v2/_catalog", {}, None, 200, {"Content-Type": "application/json"}, None),
    ("catalog-page", "GET", "/v2/_catalog?n=1", {}, None, 200, {"Link": None}, None),
    ("upload-digest-mismatch", "POST", "/v2/{repo}/blobs/uploads/?digest={missing}", {}, b"other bytes", 400,
     {}, "DIGEST_INVALID"),
    ("upload-bad-digest", "POST", "/v2/{repo}/blobs/uploads/?digest=sha256:zz", {}, b"x", 400, {},
     "DIGEST_INVALID"),
    ("upload-patch-unknown", "PATCH", "/v2/{repo}/blobs/uploads/0123abcd", {}, b"x", 404, {},
     "BLOB_UPLOAD_UNKNOWN"),
    ("upload-put-unknown", "PUT", "/v2/{repo}/blobs/uploads/0123abcd?digest={layer}", {}, b"", 404, {},
     "BLOB_UPLOAD_UNKNOWN"),
    ("upload-get-unknown", "GET", "/v2/{repo}/blobs/uploads/0123abcd", {}, None, 404, {}, "BLOB_UPLOAD_UNKNOWN"),
    ("upload-delete-unknown", "DELETE", "/v2/{repo}/blobs/uploads/0123abcd", {}, None, 404, {},
     "BLOB_UPLOAD_UNKNOWN"),
    ("blob-delete-unknown", "DELETE", "/v2/{repo}/blobs/{missing}", {}, None, 404, {}, "BLOB_UNKNOWN"),
    ("manifest-delete-unknown", "DELETE", "/v2/{repo}/manifests/{missing}", {}, None, 404, {},
     "MANIFEST_UNKNOWN"),
    ("unknown-route", "GET", "/v2/{repo}/nothing-here", {}, None, 404, {}, "NAME_UNKNOWN"),
]


def _fill(text: str, v: dict) -> str:
    return text.format(repo=REPO, missing=MISSING, **{k: x for k, x in v.items() if not isinstance(x, Image)})


def _body(body, v: dict):
    img = v["img"]
    if body == "missing_blob_manifest":
        return blob_manifest(MISSING, 5, v["config"], len(img.config))
    if body == "wrong_size_manifest":
        return blob_manifest(v["layer"], v["layer_size"] + 1, v["config"], len(img.config))
    if body == "valid_manifest":
        return img.manifest()
    return body


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_endpoint(case, http, registry_url, seeded):
    _, method, path, headers, body, status, want_headers, code = case
    async with http.request(method, registry_url + _fill(path, seeded), headers=headers,
                            data=_body(body, seeded)) as r:
        data = await r.read()
        assert r.status == status, data
        for name, value in want_headers.items():
            assert name in r.headers, name
            if value is not None:
                assert r.headers[name] == _fill(value, seeded), name
        if code is not None:
            assert json.loads(data)["errors"][0]["code"] == code
            assert r.headers["Content-Type"].startswith("application/json")


async def test_bodies_of_reads(http, registry_url, seeded):
    img = seeded["img"]
    async with http.get(f"{registry_url}/v2/{REPO}/blobs/{seeded['layer']}") as r:
        assert await r.read() == img.layer
    async with http.get(f"{registry_url}/v2/{REPO}/blobs/{seeded['layer']}", headers={"Range": "bytes=10-19"}) as r:
        assert await r.read() == img.layer[10:20]
    async with http.get(f"{registry_url}/v2/{REPO}/manifests/v1") as r:
        assert await r.read() == img.manifest()
    async with http.get(f"{registry_url}/v2/{REPO}/tags/list") as r:
        assert await r.json() == {"name": REPO, "tags": ["multi", "v1", "v2s2"]}
    async with http.get(f"{registry_url}/v2/{REPO}/tags/list", params={"n": "2", "last": "multi"}) as r:
        assert (await r.json())["tags"] == ["v1", "v2s2"] and "Link" not in r.headers
    async with http.get(f"{registry_url}/v2/_catalog") as r:
        assert REPO in (await r.json())["repositories"]


async def test_referrers_and_subject_header(http, registry_url, seeded):
    assert seeded["oci_subject"] == seeded["manifest"]
    url = f"{registry_url}/v2/{REPO}/referrers/{seeded['manifest']}"
    async with http.get(url) as r:
        got = await r.json()
    assert got["mediaType"] == OCI_INDEX
    assert got["manifests"] == [{"mediaType": OCI_MANIFEST, "digest": seeded["sig"], "size": got["manifests"][0]["size"],
                                 "artifactType": SIG, "annotations": {"org.example": "yes"}}]
    async with http.get(url, params={"artifactType": "application/other"}) as r:
        assert (await r.json())["manifests"] == []
    async with http.get(f"{registry_url}/v2/{REPO}/referrers/{MISSING}") as r:
        assert r.status == 200 and (await r.json())["manifests"] == []


async def test_chunked_upload_with_ranges(http, registry_url, seeded):
    data = os.urandom(300_000)
    async with http.post(f"{registry_url}/v2/{REPO}/blobs/uploads/") as r:
        assert r.status == 202 and r.headers["Range"] == "0-0"
        loc = registry_url + r.headers["Location"]
    async with http.patch(loc, data=data[:100_000], headers={"Content-Range": "0-99999"}) as r:
        assert r.status == 202 and r.headers["Range"] == "0-99999"
    async with http.patch(loc, data=data[:10], headers={"Content-Range": "50-59"}) as r:
        assert r.status == 416, "an out-of-order chunk is refused"
    async with http.patch(loc, data=data[:10], headers={"Content-Range": "100000-100020"}) as r:
        assert r.status == 416, "a Content-Range that disagrees with the body length is refused"
    async with http.get(loc) as r:
        assert r.status == 204 and r.headers["Range"] == "0-99999"
        assert r.headers["Docker-Upload-UUID"]

    async def stream():  # a streamed PATCH: no Content-Range, chunked transfer
        yield data[100_000:200_000]
        yield data[200_000:250_000]

    async with http.patch(loc, data=stream()) as r:
        assert r.status == 202 and r.headers["Range"] == "0-249999"
    async with http.get(f"{registry_url}/v2/dyrg/elsewhere/blobs/uploads/{loc.rsplit('/', 1)[1]}") as r:
        assert r.status == 404, "a session cannot be continued under another repository"
    async with http.put(loc, params={"digest": digest(b"wrong")}, data=data[250_000:]) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["code"] == "DIGEST_INVALID"
    async with http.put(loc, params={"digest": digest(data)}) as r:
        assert r.status == 201, await r.text()
        assert r.headers["Location"] == f"/v2/{REPO}/blobs/{digest(data)}"
    async with http.get(f"{registry_url}/v2/{REPO}/blobs/{digest(data)}") as r:
        assert await r.read() == data
    async with http.get(loc) as r:
        assert r.status == 404, "a finished session is gone"


async def test_put_with_final_chunk_sha512_and_cancel(http, registry_url, seeded):
    data = os.urandom(5000)
    async with http.post(f"{registry_url}/v2/{REPO}/blobs/uploads/") as r:
        loc = registry_url + r.headers["Location"]
    async with http.patch(loc, data=data[:1000], headers={"Content-Range": "0-999"}) as r:
        assert r.status == 202
    async with http.put(loc, params={"digest": digest(data, "sha512")}, data=data[1000:],
                        headers={"Content-Range": "1000-4999"}) as r:
        assert r.status == 201, await r.text()
    async with http.head(f"{registry_url}/v2/{REPO}/blobs/{digest(data, 'sha512')}") as r:
        assert r.status == 200 and r.headers["Content-Length"] == "5000"
    async with http.post(f"{registry_url}/v2/{REPO}/blobs/uploads/") as r:
        loc = registry_url + r.headers["Location"]
    async with http.delete(loc) as r:
        assert r.status == 204
    async with http.get(loc) as r:
        assert r.status == 404


async def test_empty_blob(http, registry_url, seeded):
    d = await push_blob(http, registry_url, REPO, b"")
    async with http.get(f"{registry_url}/v2/{REPO}/blobs/{d}") as r:
        assert r.status == 200 and await r.read() == b""


async def test_mount(http, registry_url, seeded):
    layer = seeded["layer"]
    async with http.post(f"{registry_url}/v2/dyrg/mounted/blobs/uploads/",
                         params={"mount": layer, "from": REPO}) as r:
        assert r.status == 201 and r.headers["Location"] == f"/v2/dyrg/mounted/blobs/{layer}"
    async with http.head(f"{registry_url}/v2/dyrg/mounted/blobs/{layer}") as r:
        assert r.status == 200
    async with http.post(f"{registry_url}/v2/dyrg/mounted2/blobs/uploads/", params={"mount": layer}) as r:
        assert r.status == 201, "anonymous mount from a repository the client may pull"
    async with http.post(f"{registry_url}/v2/dyrg/mounted/blobs/uploads/",
                         params={"mount": MISSING, "from": REPO}) as r:
        assert r.status == 202 and "/blobs/uploads/" in r.headers["Location"], "falls back to an upload"


async def test_deletes(http, registry_url, seeded):
    img = Image()
    d = await push_image(http, registry_url, "dyrg/del", "a", img)
    await push_manifest(http, registry_url, "dyrg/del", "b", img.manifest())
    async with http.delete(f"{registry_url}/v2/dyrg/del/manifests/a") as r:
        assert r.status == 202
    async with http.get(f"{registry_url}/v2/dyrg/del/tags/list") as r:
        assert (await r.json())["tags"] == ["b"]
    async with http.head(f"{registry_url}/v2/dyrg/del/manifests/{d}") as r:
        assert r.status == 200, "deleting a tag leaves the manifest"
    async with http.delete(f"{registry_url}/v2/dyrg/del/manifests/{d}") as r:
        assert r.status == 202
    async with http.head(f"{registry_url}/v2/dyrg/del/manifests/b") as r:
        assert r.status == 404, "deleting a manifest removes its tags"
    async with http.delete(f"{registry_url}/v2/dyrg/del/blobs/{digest(img.layer)}") as r:
        assert r.status == 202
    async with http.head(f"{registry_url}/v2/dyrg/del/blobs/{digest(img.layer)}") as r:
        assert r.status == 404


async def test_index_needs_its_manifests(http, registry_url, seeded):
    stray = Image().manifest()
    async with http.put(f"{registry_url}/v2/{REPO}/manifests/stray-index", data=index(stray),
                        headers={"Content-Type": OCI_INDEX}) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"


async def test_out_of_order_chunk_code_is_the_specs(http, registry_url, seeded):
    async with http.post(f"{registry_url}/v2/{REPO}/blobs/uploads/") as r:
        loc = registry_url + r.headers["Location"]
    async with http.patch(loc, data=b"x" * 10, headers={"Content-Range": "10-19"}) as r:
        assert r.status == 416
        assert (await r.json())["errors"][0]["code"] in SPEC_CODES
