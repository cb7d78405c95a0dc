"""The OCI upload protocol on the data plane (`/v2/r/blobs/uploads/<id>`), over real HTTP.

The commit hook is the app's injected dependency (in the service it asks the gateway over
the bus); here it records what it was asked, or refuses.
"""

from __future__ import annotations

import os

import pytest
from yarl import URL

from services.layer_store.http import READ_BUFSIZE, create_app
from services.layer_store.storage.filesystem import FilesystemDriver
from shared.errors import NotFound
from shared.messages.layer_store import UPLOAD_HOOK_LABEL, UploadTaken
from shared.oci.digest import Digest
from tests.unit.layer_store.signing import new_signer, signing

DATA = os.urandom(300_000)
DIGEST = Digest.from_bytes(DATA)
HOOK = "dyrp.test.hook"


class Hook:
    def __init__(self):
        self.asked = []
        self.refuse = False

    async def __call__(self, subject, msg):
        if self.refuse:
            raise NotFound("no such upload here", detail_code="BLOB_UPLOAD_UNKNOWN")
        self.asked.append((subject, msg))
        return UploadTaken(location=f"http://registry.test/v2/r/blobs/{msg.digest}")


@pytest.fixture
def hook():
    return Hook()


@pytest.fixture
async def client(aiohttp_client, tmp_path, hook):
    signer = new_signer()
    app = create_app(FilesystemDriver(tmp_path / "store"), signer, commit_hook=hook)
    return await aiohttp_client(app, server_kwargs={"read_bufsize": READ_BUFSIZE},
                                middlewares=[signing(signer)])


async def start(client, labels=None) -> str:
    r = await client.post("/uploads", json={"labels": {UPLOAD_HOOK_LABEL: HOOK} if labels is None else labels})
    assert r.status == 201, await r.text()
    return (await r.json())["id"]


async def oci_error(r, status: int, code: str) -> None:
    assert r.status == status, await r.text()
    assert [e["code"] for e in (await r.json())["errors"]] == [code]


async def test_chunked_upload_commits_through_the_hook(client, hook):
    uid = await start(client)
    url = f"/v2/r/blobs/uploads/{uid}"
    r = await client.patch(url, data=DATA[:100_000], headers={"Content-Range": "0-99999"})
    assert r.status == 202
    location = URL(r.headers["Location"])
    assert (location.path, r.headers["Range"], r.headers["Docker-Upload-UUID"]) == (url, "0-99999", uid)
    assert {"exp", "sig"} <= set(location.query)  # the session's URL, signed anew
    # out of order, or a range that disagrees with the body: 416, nothing appended
    r = await client.patch(url, data=b"x" * 10, headers={"Content-Range": "0-9"})
    await oci_error(r, 416, "BLOB_UPLOAD_INVALID")
    r = await client.patch(url, data=b"x" * 10, headers={"Content-Range": "100000-100019"})
    await oci_error(r, 416, "BLOB_UPLOAD_INVALID")
    r = await client.get(url)
    assert r.status == 204 and r.headers["Range"] == "0-99999" and URL(r.headers["Location"]).path == url
    async def streamed():  # chunked transfer encoding, no range
        for i in range(100_000, 200_000, 30_000):
            yield DATA[i:min(i + 30_000, 200_000)]
    r = await client.patch(url, data=streamed())
    assert r.status == 202 and r.headers["Range"] == "0-199999"
    r = await client.put(url, params={"digest": DIGEST}, data=DATA[200_000:])
    assert r.status == 201, await r.text()
    assert r.headers["Location"] == f"http://registry.test/v2/r/blobs/{DIGEST}"
    assert r.headers["Docker-Content-Digest"] == DIGEST
    [(subject, msg)] = hook.asked
    assert (subject, msg.upload_id, msg.digest, msg.size) == (HOOK, uid, DIGEST, len(DATA))
    r = await client.get(f"/blobs/{DIGEST}")
    assert await r.read() == DATA
    await oci_error(await client.get(url), 404, "BLOB_UPLOAD_UNKNOWN")


async def test_monolithic_put_and_last_chunk_at_an_offset(client, hook):
    uid = await start(client)
    r = await client.put(f"/v2/r/blobs/uploads/{uid}", params={"digest": DIGEST}, data=DATA)
    assert r.status == 201
    uid = await start(client)
    await client.patch(f"/v2/r/blobs/uploads/{uid}", data=b"hello ")
    r = await client.put(f"/v2/r/blobs/uploads/{uid}", params={"digest": Digest.from_bytes(b"hello world")},
                         data=b"world", headers={"Content-Range": "6-10"})
    assert r.status == 201, await r.text()
    assert [m.size for _, m in hook.asked] == [len(DATA), 11]


async def test_only_sessions_started_for_it_answer(client):
    plain = await start(client, labels={})
    for method in ("PATCH", "GET", "PUT", "DELETE"):
        r = await client.request(method, f"/v2/r/blobs/uploads/{plain}", params={"digest": DIGEST})
        await oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
        r = await client.request(method, "/v2/r/blobs/uploads/" + "0" * 32, params={"digest": DIGEST})
        await oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    r = await client.get(f"/uploads/{plain}")
    assert r.status == 200 and (await r.json())["labels"] == {}


async def test_bad_digest_stores_nothing_and_the_session_stays(client, hook):
    uid = await start(client)
    await client.patch(f"/v2/r/blobs/uploads/{uid}", data=b"hello")
    r = await client.put(f"/v2/r/blobs/uploads/{uid}", params={"digest": Digest.from_bytes(b"other")})
    await oci_error(r, 400, "DIGEST_INVALID")
    await oci_error(await client.put(f"/v2/r/blobs/uploads/{uid}"), 400, "DIGEST_INVALID")
    assert hook.asked == []
    assert (await client.get(f"/blobs/{Digest.from_bytes(b'other')}")).status == 404
    r = await client.get(f"/v2/r/blobs/uploads/{uid}")
    assert r.status == 204 and r.headers["Range"] == "0-4"
    r = await client.delete(f"/v2/r/blobs/uploads/{uid}")
    assert r.status == 204
    await oci_error(await client.get(f"/v2/r/blobs/uploads/{uid}"), 404, "BLOB_UPLOAD_UNKNOWN")


async def test_a_refused_hook_fails_the_put(client, hook):
    hook.refuse = True
    uid = await start(client)
    r = await client.put(f"/v2/r/blobs/uploads/{uid}", params={"digest": DIGEST}, data=DATA)
    await oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_without_a_hook_nothing_commits(aiohttp_client, tmp_path):
    signer = new_signer()
    client = await aiohttp_client(create_app(FilesystemDriver(tmp_path / "store"), signer),
                                  middlewares=[signing(signer)])
    uid = await start(client)
    r = await client.put(f"/v2/r/blobs/uploads/{uid}", params={"digest": DIGEST}, data=DATA)
    await oci_error(r, 503, "UNAVAILABLE")
    assert (await client.get(f"/blobs/{DIGEST}")).status == 404
