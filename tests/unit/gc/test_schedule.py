"""Leases, tick claims and schedules on a real NATS: a scheduled job runs once per tick."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from shared import bus, codec, cron, subjects
from shared.errors import InvalidArgument
from shared.messages.common import Empty
from shared.messages.gc import (GcFinished, PolicyRequest, RunReply, RunRequest, Schedule,
                                ScheduleReply, ScheduleRequest, StatusReply)
from services.garbage_collector.jobs import Settings
from services.garbage_collector.lease import Leases, LeaseRecord, TickClaim
from services.garbage_collector.service import GarbageCollector
from services.garbage_collector.state import GcState

# The `untagged` job needs only NATS (registry metadata in KV), so it stands in for any job.
JOB = "untagged"


def settings() -> Settings:
    sfx = f"-dygc-{uuid.uuid4().hex[:8]}"
    return Settings(registry_suffix=sfx, state_suffix=sfx)


async def replica(nats_url, s: Settings, name: str, ttl: float = 5.0):
    nc = await bus.connect(nats_url, name=name)
    gc = await GarbageCollector.open(nc, s, replica=name, lease_ttl=ttl)
    return nc, gc


async def collect_events(nc, into: list[GcFinished]):
    dec = codec.decoder(GcFinished)

    async def cb(m):
        into.append(dec.decode(m.data))
    return await nc.subscribe(subjects.EVENT_GC_FINISHED, cb=cb)


def test_cron_forms():
    assert cron.validate(" */5  * * * * ") == "*/5 * * * *"
    t = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
    assert cron.latest_tick("* * * * * *", t) == t  # a tick at `now` counts
    assert cron.next_tick("* * * * * *", t) == t + 1
    assert cron.latest_tick("*/10 * * * * *", t + 5) == t - 0  # seconds first: 22:13:20
    assert cron.latest_tick("0 * * * *", t) == t - 13 * 60 - 20
    assert cron.parse_duration("7d") == 7 * 86400 and cron.parse_duration("90") == 90
    for bad in ("* * *", "61 * * * *", "every minute"):
        with pytest.raises(InvalidArgument):
            cron.validate(bad)
    with pytest.raises(InvalidArgument):
        cron.parse_duration("7 days")


async def test_lease_is_exclusive_and_expires(nc):
    s = settings()
    state = await GcState.open(nc, suffix=s.state_suffix)
    now = [1000.0]
    leases = Leases(state.kv, ttl=10, clock=lambda: now[0])
    a = await leases.acquire("registry", "a")
    assert a is not None
    assert await leases.acquire("registry", "b") is None
    assert await leases.acquire("registry", "a") is None  # not re-entrant either
    assert await leases.holder("registry") == "a"
    now[0] += 11  # a stopped renewing: expired
    b = await leases.acquire("registry", "b")
    assert b is not None and await leases.holder("registry") == "b"
    assert not await leases.renew(a) and a.lost.is_set()  # a finds it lost
    await leases.release(a)  # a stale release does not remove b's lease
    assert await leases.holder("registry") == "b"
    await leases.release(b)
    assert await leases.holder("registry") == ""
    assert await leases.acquire("registry", "c") is not None  # re-created after a delete


async def test_tick_claims(nc):
    s = settings()
    state = await GcState.open(nc, suffix=s.state_suffix)
    leases = Leases(state.kv, ttl=10)
    assert await leases.claim_tick("registry", 60, "a")
    assert await leases.claim_tick("registry", 60, "b")  # not done: b (now under lease) takes over
    assert (await leases.tick_claim("registry", 60)).taken_over_from == "a"
    await leases.finish_tick("registry", 60, "a")  # a is no longer the holder: no effect
    assert not (await leases.tick_claim("registry", 60)).done
    await leases.finish_tick("registry", 60, "b")
    assert not await leases.claim_tick("registry", 60, "c")
    assert await leases.claim_tick("registry", 120, "c")
    await leases.finish_tick("registry", 120, "c")
    assert await leases.tick_claim("registry", 60) is None  # older claims pruned


async def test_two_replicas_run_each_tick_once(nats_url, nc):
    s = settings()
    events: list[GcFinished] = []
    sub = await collect_events(nc, events)
    (nc1, gc1), (nc2, gc2) = [await replica(nats_url, s, f"dygc-r{i}") for i in (1, 2)]
    tasks = [asyncio.create_task(g.scheduler.run_forever()) for g in (gc1, gc2)]
    try:
        await gc1.on_schedule(ScheduleRequest(job=JOB, cron="* * * * * *"))
        await asyncio.sleep(4.5)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for g in (gc1, gc2):
            await g.scheduler.stop()
        await sub.unsubscribe()
    ticks = [r.tick for e in events if e.trigger == "schedule" for r in e.reports
             if r.replica.startswith("dygc-r")]
    assert len(ticks) >= 3, ticks
    assert len(ticks) == len(set(ticks)), f"a tick ran twice: {sorted(ticks)}"
    assert all(t == int(t) for t in ticks)
    status = await gc2.on_status(Empty())
    st = {j.job: j for j in status.jobs}[JOB]
    assert st.schedule == "* * * * * *" and st.last is not None and st.last.trigger == "schedule"
    for c in (nc1, nc2):
        await c.drain()


async def test_dead_holder_is_taken_over_after_ttl(nats_url, nc):
    s = settings()
    nc1, gc = await replica(nats_url, s, "dygc-survivor", ttl=1.0)
    state = gc.ctx.state
    # An hourly schedule whose current tick a dead replica claimed and leased, then died.
    tick = cron.latest_tick("0 * * * *", time.time())
    await state.schedules.put(f"schedule.{JOB}", Schedule(job=JOB, cron="0 * * * *", created_at=0))
    await gc.leases.leases.put(f"lease.{JOB}", LeaseRecord(holder="dygc-ghost",
                                                           expires_at=time.time() + 1.0))
    await gc.leases.ticks.put(f"tick.{JOB}.{int(tick)}", TickClaim(holder="dygc-ghost",
                                                                   claimed_at=time.time()))
    events: list[GcFinished] = []
    sub = await collect_events(nc, events)
    task = asyncio.create_task(gc.scheduler.run_forever())
    try:
        await asyncio.sleep(0.5)
        assert not events  # the ghost's lease is still live
        for _ in range(40):
            await asyncio.sleep(0.1)
            if events:
                break
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await gc.scheduler.stop()
        await sub.unsubscribe()
    assert [(r.tick, r.replica) for e in events for r in e.reports] == [(tick, "dygc-survivor")]
    claim = await gc.leases.tick_claim(JOB, tick)
    assert claim.done and claim.taken_over_from == "dygc-ghost"
    await nc1.drain()


async def test_bus_verbs(nats_url, nc):
    """GC_SCHEDULE/GC_POLICY/GC_EXCLUDE/GC_STATUS/GC_RUN through a real BusService."""
    s = settings()
    nc1, gc = await replica(nats_url, s, "dygc-bus")
    svc = bus.BusService(nc1, subjects.GARBAGE_COLLECTOR + "-dygc")
    # Own subjects, so that this test never answers another test's requests.
    pre = f"dygc{uuid.uuid4().hex[:6]}."
    svc.endpoint(pre + "run", RunRequest, gc.on_run)
    svc.endpoint(pre + "status", Empty, gc.on_status)
    svc.endpoint(pre + "schedule", ScheduleRequest, gc.on_schedule)
    svc.endpoint(pre + "policy", PolicyRequest, gc.on_policy)
    await svc.start()
    try:
        client = bus.BusClient(nc)
        with pytest.raises(InvalidArgument):
            await client.request(pre + "schedule", ScheduleRequest(job="nope", cron="* * * * *"),
                                 ScheduleReply)
        with pytest.raises(InvalidArgument):
            await client.request(pre + "schedule", ScheduleRequest(job="registry", cron="bad"),
                                 ScheduleReply)
        rep = await client.request(pre + "schedule", ScheduleRequest(job="all", cron="0 3 * * *"),
                                   ScheduleReply)
        assert len(rep.schedules) == 5
        await client.request(pre + "policy", PolicyRequest(repo="dygc/app", keep_last=3,
                                                           keep_within="7d", keep_tags=["v*"]),
                             Empty)
        with pytest.raises(InvalidArgument):
            await client.request(pre + "policy", PolicyRequest(repo="dygc/app"), Empty)
        st = await client.request(pre + "status", Empty(), StatusReply)
        assert {j.schedule for j in st.jobs} == {"0 3 * * *"}
        assert st.policies[0].keep_within_seconds == 7 * 86400 and st.policies[0].keep_tags == ["v*"]
        run = await client.request(pre + "run", RunRequest(jobs=[JOB], dry_run=True), RunReply)
        assert [r.job for r in run.reports] == [JOB] and run.reports[0].error == ""
        with pytest.raises(InvalidArgument):
            await client.request(pre + "run", RunRequest(jobs=["bogus"]), RunReply)
    finally:
        await svc.stop()
        await nc1.drain()


async def test_kvscan_reads_every_live_key_once(nc):
    from services.garbage_collector import kvscan
    bucket = f"dygc-scan-{uuid.uuid4().hex[:6]}"
    assert await kvscan.scan(nc, bucket, Schedule) == []  # no bucket yet
    kv = await bus.TypedKV.open(nc, bucket, Schedule)
    assert await kvscan.scan(nc, bucket, Schedule) == []  # empty bucket
    for i in range(300):
        await kv.put(f"schedule.j{i:03d}", Schedule(job=f"j{i}", cron="* * * * *"))
    await kv.put("schedule.j000", Schedule(job="again", cron="0 * * * *"))
    await kv.delete("schedule.j001")
    await kv.kv.put("other.x", b"not json")
    got = await kvscan.scan(nc, bucket, Schedule, prefix="schedule.")
    assert len(got) == 299 and got[0][0] == "schedule.j000" and got[0][1].job == "again"
    assert got[0][2] == (await kv.get("schedule.j000"))[1]  # the KV revision
    assert len(await kvscan.scan(nc, bucket, Schedule)) == 299  # undecodable values skipped
