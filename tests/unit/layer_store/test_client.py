"""LayerStoreClient's HTTP half against a real layer-store app (the bus half: test_bus_api)."""

from __future__ import annotations

import os

import aiohttp
import pytest
from aiohttp import web

from services.layer_store.http import create_app
from services.layer_store.storage.filesystem import FilesystemDriver
from shared.errors import InvalidArgument, NotFound, Unavailable
from shared.layer_store_client import LayerStoreClient, RangeNotSatisfiable
from shared.oci.digest import Digest
from tests.unit.layer_store.signing import new_signer

DATA = os.urandom(3 << 20)
DIGEST = Digest.from_bytes(DATA)


@pytest.fixture
async def store(aiohttp_server, tmp_path):
    signer = new_signer()
    server = await aiohttp_server(create_app(FilesystemDriver(tmp_path / "store"), signer))
    async with aiohttp.ClientSession() as session:
        yield LayerStoreClient(None, session, signer=signer, url=str(server.make_url("")))


async def test_put_and_read_blob(store):
    info = await store.put_blob(DATA, DIGEST, len(DATA))
    assert (info.digest, info.size) == (DIGEST, len(DATA))
    async with store.open_blob(DIGEST) as resp:
        got = b"".join([c async for c in resp.content.iter_chunked(1 << 16)])
    assert got == DATA
    async with store.open_blob(DIGEST, (10, 19)) as resp:
        assert resp.status == 206 and await resp.read() == DATA[10:20]
    async with store.open_blob(DIGEST, "bytes=-3") as resp:
        assert await resp.read() == DATA[-3:]
    async with store.open_blob(DIGEST, method="HEAD") as resp:
        assert resp.content_length == len(DATA)
        assert resp.headers["Docker-Content-Digest"] == DIGEST


async def test_errors_come_back_typed(store):
    absent = Digest.from_bytes(b"absent")
    with pytest.raises(NotFound) as ei:
        async with store.open_blob(absent):
            pass
    assert ei.value.detail_code == "BLOB_UNKNOWN"
    with pytest.raises(NotFound):
        async with store.open_blob(absent, method="HEAD"):
            pass
    await store.put_blob(b"tiny", Digest.from_bytes(b"tiny"))
    with pytest.raises(RangeNotSatisfiable) as ei:
        async with store.open_blob(Digest.from_bytes(b"tiny"), (10, None)):
            pass
    assert ei.value.http_status == 416 and isinstance(ei.value, InvalidArgument)
    with pytest.raises(InvalidArgument) as ei:
        await store.put_blob(b"abc", Digest.from_bytes(b"abd"))
    assert ei.value.detail_code == "DIGEST_INVALID"
    with pytest.raises(NotFound) as ei:
        await store.upload_status("0" * 32)
    assert ei.value.detail_code == "BLOB_UPLOAD_UNKNOWN"


async def test_chunked_streamed_and_resumed_upload(store):
    uid = await store.start_upload()
    assert await store.append(uid, DATA[:1000], start=0) == 1000

    async def stream():
        for i in range(1000, 2 << 20, 100_000):
            yield DATA[i:min(i + 100_000, 2 << 20)]

    assert await store.append(uid, stream(), start=1000) == 2 << 20
    with pytest.raises(RangeNotSatisfiable):
        await store.append(uid, b"zz", start=5)
    with pytest.raises(RangeNotSatisfiable):
        await store.append(uid, stream(), start=5)
    status = await store.upload_status(uid)
    assert status.id == uid and status.size == 2 << 20
    info = await store.commit(uid, DIGEST, len(DATA), DATA[2 << 20:])
    assert info.size == len(DATA)
    assert await store.read_blob(DIGEST) == DATA


async def test_stream_reader_is_passed_through(store, aiohttp_server):
    """A gateway hands its incoming request body (a StreamReader) straight on."""
    async def relay(request: web.Request) -> web.Response:
        uid = await store.start_upload()
        size = await store.append(uid, request.content)
        info = await store.commit(uid, request.query["digest"], size)
        return web.json_response({"size": info.size})

    app = web.Application()
    app.router.add_put("/relay", relay)
    gateway = await aiohttp_server(app)
    async with aiohttp.ClientSession() as s:
        async with s.put(gateway.make_url("/relay"), params={"digest": DIGEST}, data=DATA) as r:
            assert r.status == 200 and (await r.json())["size"] == len(DATA)
    assert await store.read_blob(DIGEST) == DATA


async def test_cancel(store):
    uid = await store.start_upload()
    await store.cancel(uid)
    with pytest.raises(NotFound):
        await store.cancel(uid)


async def test_unreachable_store_is_unavailable():
    async with aiohttp.ClientSession() as session:
        from tests.support.ports import refusing_port
        with refusing_port() as port:
            client = LayerStoreClient(None, session, signer=new_signer(), url=f"http://127.0.0.1:{port}")
            with pytest.raises(Unavailable):
                await client.start_upload()
