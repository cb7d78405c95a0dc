"""The bus harness against a real nats-server: typed replies, errors, progress, KV CAS."""

import asyncio

import msgspec
import pytest

from shared import bus
from shared.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, Unavailable
from shared.messages.common import Progress


class Ping(msgspec.Struct, kw_only=True):
    n: int
    progress_inbox: str = ""


class Pong(msgspec.Struct, kw_only=True):
    n: int


async def test_typed_request_reply_and_errors(nc, nats_url):
    svc = bus.BusService(nc, "test-svc")

    async def double(req: Ping) -> Pong:
        if req.n < 0:
            raise NotFound(f"no such number {req.n}", detail_code="NUMBER_UNKNOWN")
        for i in range(3):
            await bus.publish_progress(nc, req.progress_inbox, Progress(message=f"p{i}", step=i))
        return Pong(n=req.n * 2)

    svc.endpoint("test.double", Ping, double)
    await svc.start()
    try:
        client = bus.BusClient(await bus.connect(nats_url))
        assert (await client.request("test.double", Ping(n=21), Pong)).n == 42
        with pytest.raises(NotFound) as ei:
            await client.request("test.double", Ping(n=-1), Pong)
        assert ei.value.detail_code == "NUMBER_UNKNOWN" and "-1" in ei.value.message
        # a malformed request is refused as InvalidArgument, not a timeout
        r = await client.nc.request("test.double", b'{"n": "x"}', timeout=2)
        with pytest.raises(InvalidArgument):
            bus.decode_reply(r, Pong)
        seen = []
        rep = await client.request_with_progress("test.double", Ping(n=1), Pong, seen.append)
        assert rep.n == 2 and [p.message for p in seen] == ["p0", "p1", "p2"]
        with pytest.raises(Unavailable):
            await client.request("test.nobody", Ping(n=1), Pong, timeout=1)
        # $SRV discovery sees the service
        info = await nc.request("$SRV.PING.test-svc", b"", timeout=2)
        assert b"test-svc" in info.data
        await client.nc.close()
    finally:
        await svc.stop()


async def test_handlers_run_concurrently(nc, nats_url):
    svc = bus.BusService(nc, "test-slow")
    gate = asyncio.Event()

    async def slow(req: Ping) -> Pong:
        if req.n == 0:
            await gate.wait()
        else:
            gate.set()
        return Pong(n=req.n)

    svc.endpoint("test.slow", Ping, slow)
    await svc.start()
    client = bus.BusClient(nc)
    a = asyncio.create_task(client.request("test.slow", Ping(n=0), Pong, timeout=3))
    b = await client.request("test.slow", Ping(n=1), Pong, timeout=3)
    assert b.n == 1 and (await a).n == 0
    await svc.stop()


async def test_typed_kv_compare_and_set(nc):
    kv = await bus.TypedKV.open(nc, "test-kv", Pong)
    key = bus.kv_key("repo/name", "sha256:abc")
    assert bus.kv_key_parts(key) == ["repo/name", "sha256:abc"]
    rev = await kv.create(key, Pong(n=1))
    with pytest.raises(AlreadyExists):
        await kv.create(key, Pong(n=2))
    rev2 = await kv.update(key, Pong(n=3), last=rev)
    with pytest.raises(Conflict):
        await kv.update(key, Pong(n=4), last=rev)
    assert (await kv.get(key)) == (Pong(n=3), rev2)
    await asyncio.gather(*(kv.mutate(key, lambda v: Pong(n=(v.n if v else 0) + 1)) for _ in range(10)))
    assert (await kv.get(key))[0].n == 13
    assert await kv.keys("repo/name.") == [key]
    with pytest.raises(Conflict):
        await kv.delete(key, last=rev)
    await kv.delete(key)
    assert await kv.get(key) is None and await kv.keys() == []


async def test_kv_keys_lists_every_live_key_every_time(nc):
    """Listing right after writes sees them all, also when the last write was a delete."""
    kv = await bus.TypedKV.open(nc, "test-kv-keys", Pong)
    assert await kv.keys() == []
    for round_ in range(20):
        keys = [bus.kv_key("r", str(round_), str(i)) for i in range(5)]
        for k in keys:
            await kv.put(k, Pong(n=1))
        await kv.delete(keys[-1])
        assert await kv.keys(bus.kv_key("r", str(round_)) + ".") == sorted(keys[:-1])
