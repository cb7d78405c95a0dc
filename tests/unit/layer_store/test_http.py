"""The HTTP data plane over real HTTP (aiohttp test server) and a filesystem driver."""

from __future__ import annotations

import hashlib
import os

import pytest

from services.layer_store.http import READ_BUFSIZE, create_app
from services.layer_store.storage.filesystem import FilesystemDriver
from shared.oci.digest import Digest
from tests.unit.layer_store.signing import new_signer, signing

DATA = os.urandom(300_000)
DIGEST = Digest.from_bytes(DATA)


@pytest.fixture
def committed():
    return []


@pytest.fixture
async def client(aiohttp_client, tmp_path, committed):
    async def on_commit(info):
        committed.append(info)

    signer = new_signer()
    app = create_app(FilesystemDriver(tmp_path / "store"), signer, on_commit=on_commit)
    return await aiohttp_client(app, server_kwargs={"read_bufsize": READ_BUFSIZE},
                                middlewares=[signing(signer)])


async def upload(client, data: bytes, digest: str | None = None) -> str:
    r = await client.post("/uploads")
    assert r.status == 201
    uid = (await r.json())["id"]
    assert r.headers["Location"] == f"/uploads/{uid}"
    r = await client.put(f"/uploads/{uid}", params={"digest": digest or Digest.from_bytes(data)},
                         data=data)
    assert r.status == 201, await r.text()
    return uid


async def error(r, status: int, detail: str | None = None) -> dict:
    assert r.status == status, await r.text()
    body = await r.json()
    assert set(body) == {"code", "message", "detail_code"}
    if detail:
        assert body["detail_code"] == detail
    return body


async def test_chunked_upload_then_read(client, committed):
    r = await client.post("/uploads")
    uid = (await r.json())["id"]
    r = await client.patch(f"/uploads/{uid}", data=DATA[:100_000],
                           headers={"Content-Range": "0-99999"})
    assert r.status == 202 and r.headers["Range"] == "0-99999"
    assert (await r.json())["size"] == 100_000
    # a chunk at the wrong offset, or whose range disagrees with its length: 416
    r = await client.patch(f"/uploads/{uid}", data=b"x" * 10, headers={"Content-Range": "0-9"})
    await error(r, 416, "RANGE_INVALID")
    r = await client.patch(f"/uploads/{uid}", data=b"x" * 10, headers={"Content-Range": "100000-100019"})
    await error(r, 416)
    r = await client.patch(f"/uploads/{uid}", data=b"x", headers={"Content-Range": "garbage"})
    await error(r, 416)
    r = await client.get(f"/uploads/{uid}")
    assert r.status == 200 and (await r.json())["size"] == 100_000 and r.headers["Range"] == "0-99999"
    # a streamed chunk without a range, then the rest with the commit
    r = await client.patch(f"/uploads/{uid}", data=DATA[100_000:200_000],
                           headers={"Upload-Offset": "100000"})
    assert r.status == 202 and (await r.json())["size"] == 200_000
    r = await client.put(f"/uploads/{uid}", params={"digest": DIGEST, "size": str(len(DATA))},
                         data=DATA[200_000:])
    assert r.status == 201
    assert r.headers["Location"] == f"/blobs/{DIGEST}" and r.headers["Docker-Content-Digest"] == DIGEST
    assert (await r.json())["size"] == len(DATA)
    assert [(i.digest, i.size) for i in committed] == [(DIGEST, len(DATA))]
    r = await client.get(f"/uploads/{uid}")
    await error(r, 404, "BLOB_UPLOAD_UNKNOWN")

    r = await client.get(f"/blobs/{DIGEST}")
    assert r.status == 200 and await r.read() == DATA
    assert r.headers["Docker-Content-Digest"] == DIGEST
    assert r.headers["Content-Type"] == "application/octet-stream"
    r = await client.head(f"/blobs/{DIGEST}")
    assert r.status == 200 and int(r.headers["Content-Length"]) == len(DATA) and await r.read() == b""


@pytest.mark.parametrize("rng, status, expect", [
    ("bytes=0-9", 206, (0, 10)),
    ("bytes=299990-", 206, (299_990, 10)),
    ("bytes=-5", 206, (299_995, 5)),
    ("bytes=299995-400000", 206, (299_995, 5)),
    ("bytes=300000-", 416, None),
    ("bytes=10-5", 416, None),
    ("bytes=-0", 416, None),
    ("bytes=0-1,5-6", 416, None),
    ("items=0-1", 416, None),
])
async def test_range_reads(client, rng, status, expect):
    await upload(client, DATA)
    r = await client.get(f"/blobs/{DIGEST}", headers={"Range": rng})
    if status == 416:
        await error(r, 416, "RANGE_INVALID")
        assert r.headers["Content-Range"] == f"bytes */{len(DATA)}"
        return
    start, length = expect
    assert r.status == 206
    assert r.headers["Content-Range"] == f"bytes {start}-{start + length - 1}/{len(DATA)}"
    assert await r.read() == DATA[start:start + length]


async def test_blob_errors(client):
    r = await client.get(f"/blobs/{Digest.from_bytes(b'absent')}")
    await error(r, 404, "BLOB_UNKNOWN")
    r = await client.head(f"/blobs/{Digest.from_bytes(b'absent')}")
    assert r.status == 404
    for bad in ("sha256:xyz", "md5:" + "0" * 32, "notadigest", "sha256:" + "A" * 64):
        r = await client.get(f"/blobs/{bad}")
        await error(r, 400, "DIGEST_INVALID")


async def test_commit_errors_store_nothing(client):
    r = await client.post("/uploads")
    uid = (await r.json())["id"]
    await client.patch(f"/uploads/{uid}", data=b"hello")
    wrong = Digest.from_bytes(b"other")
    await error(await client.put(f"/uploads/{uid}", params={"digest": wrong}), 400, "DIGEST_INVALID")
    await error(await client.put(f"/uploads/{uid}", params={"digest": Digest.from_bytes(b"hello"),
                                                            "size": "6"}), 400, "SIZE_INVALID")
    await error(await client.put(f"/uploads/{uid}", params={"digest": Digest.from_bytes(b"hello"),
                                                            "size": "-1"}), 400, "SIZE_INVALID")
    await error(await client.put(f"/uploads/{uid}", params={"digest": "sha256:nope"}), 400, "DIGEST_INVALID")
    await error(await client.put(f"/uploads/{uid}"), 400, "DIGEST_INVALID")
    for d in (wrong, Digest.from_bytes(b"hello")):
        await error(await client.get(f"/blobs/{d}"), 404)
    # still usable
    r = await client.put(f"/uploads/{uid}", params={"digest": Digest.from_bytes(b"hello")})
    assert r.status == 201


async def test_unknown_uploads_and_cancel(client):
    r = await client.post("/uploads")
    uid = (await r.json())["id"]
    assert (await client.delete(f"/uploads/{uid}")).status == 204
    for u in (uid, "f" * 32, "..%2F..%2Fetc", "not-an-id"):
        await error(await client.get(f"/uploads/{u}"), 404, "BLOB_UPLOAD_UNKNOWN")
        await error(await client.patch(f"/uploads/{u}", data=b"x"), 404, "BLOB_UPLOAD_UNKNOWN")
        await error(await client.put(f"/uploads/{u}", params={"digest": DIGEST}), 404)
        await error(await client.delete(f"/uploads/{u}"), 404)
    await error(await client.post("/uploads", params={"algorithm": "md5"}), 400)


async def test_sha512_upload(client):
    d = Digest(f"sha512:{hashlib.sha512(DATA).hexdigest()}")
    r = await client.post("/uploads", params={"algorithm": "sha512"})
    uid = (await r.json())["id"]
    r = await client.put(f"/uploads/{uid}", params={"digest": d}, data=DATA)
    assert r.status == 201
    r = await client.get(f"/blobs/{d}", headers={"Range": "bytes=1-2"})
    assert r.status == 206 and await r.read() == DATA[1:3]


async def test_existing_blob_and_empty_blob(client):
    await upload(client, DATA)
    await upload(client, DATA)  # committed again: accepted, not rewritten
    empty = Digest.from_bytes(b"")
    await upload(client, b"", empty)
    r = await client.get(f"/blobs/{empty}")
    assert r.status == 200 and await r.read() == b""
    await error(await client.get(f"/blobs/{empty}", headers={"Range": "bytes=0-"}), 416)


async def test_upload_resumes_after_restart(aiohttp_client, tmp_path):
    signer = new_signer()
    first = await aiohttp_client(create_app(FilesystemDriver(tmp_path / "s"), signer),
                                 middlewares=[signing(signer)])
    uid = (await (await first.post("/uploads")).json())["id"]
    await first.patch(f"/uploads/{uid}", data=DATA[:123_456])
    await first.close()  # the server and its app (and driver) go away

    second = await aiohttp_client(create_app(FilesystemDriver(tmp_path / "s"), signer),
                                  middlewares=[signing(signer)])
    r = await second.get(f"/uploads/{uid}")
    assert (await r.json())["size"] == 123_456
    r = await second.patch(f"/uploads/{uid}", data=DATA[123_456:],
                           headers={"Content-Range": f"123456-{len(DATA) - 1}"})
    assert r.status == 202
    r = await second.put(f"/uploads/{uid}", params={"digest": DIGEST})
    assert r.status == 201
    assert await (await second.get(f"/blobs/{DIGEST}")).read() == DATA
