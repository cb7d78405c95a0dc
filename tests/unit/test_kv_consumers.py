"""KV listings leave no JetStream consumer behind, however they end.

Each test counts the consumers of its bucket's stream on a real nats-server after hundreds
of listings, scans, cancellations and timeouts: the count must be back to zero at once, long
before the server's own inactive-threshold clean-up could have removed anything.
"""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest

from services.garbage_collector import kvscan
from shared import bus, jsconsumer

MANY = 60  # over TypedKV's get-each limit: these listings take a consumer
FEW = 3


class Rec(msgspec.Struct):
    n: int


@pytest.fixture
async def kv(nc):
    bucket = f"test-consumers-{uuid.uuid4().hex[:8]}"
    tkv = await bus.TypedKV.open(nc, bucket, Rec)
    await asyncio.gather(*(tkv.put(bus.kv_key("many", f"k{i:03}"), Rec(n=i)) for i in range(MANY + 1)),
                         *(tkv.put(bus.kv_key("few", f"k{i}"), Rec(n=i)) for i in range(FEW + 1)))
    await tkv.delete(bus.kv_key("many", f"k{MANY:03}"))
    await tkv.delete(bus.kv_key("few", f"k{FEW}"))
    yield bucket, tkv
    await nc.jetstream().delete_key_value(bucket)


async def consumers(nc, bucket: str) -> int:
    await jsconsumer.settle()
    return (await nc.jetstream().stream_info(f"KV_{bucket}")).state.consumer_count


async def test_listings_and_scans_delete_their_consumers(nc, kv):
    bucket, tkv = kv
    many = [bus.kv_key("many", f"k{i:03}") for i in range(MANY)]
    few = [bus.kv_key("few", f"k{i}") for i in range(FEW)]
    for _ in range(10):
        got = await asyncio.gather(*(tkv.keys("many.") for _ in range(10)),
                                   *(tkv.keys("few.") for _ in range(10)),
                                   *(kvscan.scan(nc, bucket, Rec, prefix="many.") for _ in range(10)))
        assert got[:10] == [many] * 10
        assert got[10:20] == [few] * 10
        assert [[k for k, _, _ in s] for s in got[20:]] == [many] * 10
    assert await tkv.keys("none.") == []
    assert await kvscan.scan(nc, bucket, Rec, prefix="none.") == []
    assert await consumers(nc, bucket) == 0


@pytest.mark.parametrize("reader", ["keys", "scan"])
async def test_cancelled_and_timed_out_readers_delete_their_consumers(nc, kv, reader):
    bucket, tkv = kv

    def read():
        return tkv.keys("many.") if reader == "keys" else kvscan.scan(nc, bucket, Rec, prefix="many.")

    async def cancelled_after(steps: int) -> None:
        task = asyncio.create_task(read())
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def timed_out_after(seconds: float) -> None:
        try:
            await asyncio.wait_for(read(), seconds)
        except asyncio.TimeoutError:
            pass

    # Interrupted at every stage: before the consumer exists, while it is being created,
    # while it delivers, while it is being deleted.
    for round_ in range(5):
        await asyncio.gather(*(cancelled_after(steps) for steps in range(40)),
                             *(timed_out_after(0.0005 * i) for i in range(20)))
        assert await consumers(nc, bucket) == 0, f"round {round_}"
