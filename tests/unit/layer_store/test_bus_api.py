"""The layer-store service on a real nats-server: bus verbs, events, and the client over both."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from services.layer_store.service import serve
from shared.config import split_host_port
from shared import bus, subjects
from shared.config import Config
from shared.dataplane_sign import DataplaneSigner, load_key
from shared.errors import Conflict, InvalidArgument, NotFound
from shared.layer_store_client import LayerStoreClient
from shared.messages.layer_store import BlobCommitted, BlobDeleted
from shared.oci.digest import Digest


@pytest.fixture
async def service(nats_url, tmp_path):
    cfg = Config(data_dir=str(tmp_path), nats_url=nats_url, layer_store_addr="127.0.0.1:0")
    task = asyncio.create_task(serve(cfg))
    nc = await bus.connect(nats_url, name="test-layer-store")
    for _ in range(100):  # ready once it answers $SRV.PING
        try:
            await nc.request(f"$SRV.PING.{subjects.LAYER_STORE}", b"", timeout=0.2)
            break
        except Exception:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
    try:
        yield nc, tmp_path
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.drain()


async def test_bus_verbs_and_events(service):
    nc, data_dir = service
    events: list = []
    bc = bus.BusClient(nc)

    async def collect(subject, typ):
        async for ev in bc.subscribe(subject, typ):
            events.append(ev)

    watchers = [asyncio.create_task(collect(subjects.EVENT_BLOB_COMMITTED, BlobCommitted)),
                asyncio.create_task(collect(subjects.EVENT_BLOB_DELETED, BlobDeleted))]
    await nc.flush()
    await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as session:
        client = LayerStoreClient(nc, session, signer=DataplaneSigner(load_key(data_dir)))
        url = await client.locate()
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")

        blobs = [f"blob {i}".encode() for i in range(3)]
        digests = sorted(Digest.from_bytes(b) for b in blobs)
        for b in blobs:
            await client.put_blob(b, Digest.from_bytes(b))
        assert (data_dir / "layer-store" / "blobs" / "sha256").is_dir()

        info = await client.stat(digests[0])
        assert info.size == 6 and info.touched_at == 0.0
        fence = time.time()
        await asyncio.sleep(0.01)
        touched = await client.stat(digests[0], touch=True)
        assert touched.touched_at > fence
        with pytest.raises(NotFound):
            await client.stat(Digest.from_bytes(b"absent"))

        page = await client.list(limit=2)
        assert [b.digest for b in page.blobs] == digests[:2] and page.next == digests[1]
        assert [b.digest async for b in client.list_all(page_size=2)] == digests

        uid = await client.start_upload()
        await client.append(uid, b"partial")
        usage = await client.usage()
        assert (usage.blobs, usage.bytes, usage.uploads, usage.upload_bytes) == (3, 18, 1, 7)
        assert [u.id for u in await client.uploads()] == [uid]
        await client.abort(uid)
        assert await client.uploads() == []
        with pytest.raises(NotFound):
            await client.abort(uid)

        # the GC fence: touched after the fence -> refused; dry run -> nothing removed
        with pytest.raises(Conflict):
            await client.delete(digests[0], unless_touched_since=fence)
        dry = await client.delete(digests[1], unless_touched_since=time.time() + 1, dry_run=True)
        assert (dry.deleted, dry.freed) == (False, 6)
        rep = await client.delete(digests[1], unless_touched_since=time.time() + 1)
        assert (rep.deleted, rep.freed) == (True, 6)
        with pytest.raises(NotFound):
            await client.stat(digests[1])

        # a malformed request is an error reply, not a timeout
        r = await nc.request(subjects.BLOB_STAT, b'{"digest": "sha256:nope"}', timeout=2)
        with pytest.raises(InvalidArgument):
            bus.decode_reply(r, dict)

    for _ in range(50):
        if len(events) >= 4:
            break
        await asyncio.sleep(0.02)
    for w in watchers:
        w.cancel()
    committed = sorted(e.digest for e in events if isinstance(e, BlobCommitted))
    deleted = [e.digest for e in events if isinstance(e, BlobDeleted)]
    assert committed == digests and deleted == [digests[1]]


def test_split_host_port():
    assert split_host_port("127.0.0.1:0") == ("127.0.0.1", 0)
    assert split_host_port("[::1]:8080") == ("::1", 8080)
    assert split_host_port(":5001") == ("0.0.0.0", 5001)
    with pytest.raises(InvalidArgument):
        split_host_port("localhost")
    with pytest.raises(InvalidArgument):
        split_host_port("127.0.0.1:70000")
