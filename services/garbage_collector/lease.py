"""Leases and per-tick claims in KV, so that replicas agree without a lock server.

A job's lease (`lease.<job>`) says which replica runs it now: taken with a CAS create (or a
CAS update of an expired lease), renewed while the job runs, deleted when it ends. If the
holder dies its lease expires after the TTL and another replica may take the job.

A tick claim (`tick.<job>.<unix seconds>`) records that a scheduled tick was served: a
replica that holds the lease claims the tick with a CAS create, and marks it done at the
end. A claim found not done under a lease we now hold belongs to a replica whose lease
expired mid-run: we take the tick over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats.errors
import nats.js.errors

from shared.bus import TypedKV, kv_key, kv_key_parts
from shared.errors import AlreadyExists, Conflict, NotFound, Unavailable

log = logging.getLogger("dockyard.gc.lease")


class LeaseRecord(msgspec.Struct, kw_only=True):
    holder: str
    expires_at: float
    acquired_at: float = 0.0


class TickClaim(msgspec.Struct, kw_only=True):
    holder: str
    claimed_at: float
    done: bool = False
    finished_at: float = 0.0
    taken_over_from: str = ""


class Lease:
    """A held lease; `lost` is set when a renewal finds someone else holds it."""

    def __init__(self, job: str, holder: str, revision: int):
        self.job = job
        self.holder = holder
        self.revision = revision
        self.lost = asyncio.Event()


class Leases:
    def __init__(self, kv: Any, *, ttl: float = 60.0, clock=time.time):
        self.leases = TypedKV(kv, LeaseRecord)
        self.ticks = TypedKV(kv, TickClaim)
        self.ttl = ttl
        self.clock = clock

    # ---- leases --------------------------------------------------------------------

    async def acquire(self, job: str, holder: str) -> Lease | None:
        """The job's lease, or None while a live holder has it."""
        key = kv_key("lease", job)
        now = self.clock()
        rec = LeaseRecord(holder=holder, expires_at=now + self.ttl, acquired_at=now)
        got = await self.leases.get(key)
        try:
            if got is None:
                return Lease(job, holder, await self.leases.create(key, rec))
            cur, rev = got
            if cur.expires_at > now:
                return None  # live, even if ours: one run of a job at a time
            log.info("lease of %s held by %s expired %.1fs ago: taking it", job, cur.holder,
                     now - cur.expires_at)
            return Lease(job, holder, await self.leases.update(key, rec, last=rev))
        except (AlreadyExists, Conflict):
            return None  # another replica won the race

    async def renew(self, lease: Lease) -> bool:
        now = self.clock()
        rec = LeaseRecord(holder=lease.holder, expires_at=now + self.ttl, acquired_at=now)
        try:
            lease.revision = await self.leases.update(kv_key("lease", lease.job), rec,
                                                      last=lease.revision)
            return True
        except Conflict:
            lease.lost.set()
            return False

    async def release(self, lease: Lease) -> None:
        """Delete the lease only if it is still ours (a CAS on the revision we wrote)."""
        try:
            await self.leases.kv.delete(kv_key("lease", lease.job), last=lease.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            pass  # taken over meanwhile: the new holder's lease stands
        except nats.js.errors.APIError as e:
            # TypedKV.delete reports this CAS failure as Unavailable; read the code here.
            if getattr(e, "err_code", None) != 10071:
                raise Unavailable(f"releasing the lease of {lease.job}: {e}") from e
        except nats.errors.Error as e:
            raise Unavailable(f"releasing the lease of {lease.job}: {e}") from e

    async def holder(self, job: str) -> str:
        got = await self.leases.get(kv_key("lease", job))
        if got is None or got[0].expires_at <= self.clock():
            return ""
        return got[0].holder

    @contextlib.asynccontextmanager
    async def held(self, job: str, holder: str) -> AsyncIterator[Lease | None]:
        """Hold the job's lease (renewed every TTL/3) for the block; None if busy."""
        lease = await self.acquire(job, holder)
        if lease is None:
            yield None
            return

        async def renew_loop() -> None:
            while not lease.lost.is_set():
                await asyncio.sleep(self.ttl / 3)
                try:
                    if not await self.renew(lease):
                        log.warning("lost the lease of %s", job)
                except Exception:  # a bus hiccup: retry at the next interval
                    log.exception("renewing the lease of %s", job)

        task = asyncio.create_task(renew_loop())
        try:
            yield lease
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if not lease.lost.is_set():
                await self.release(lease)

    # ---- tick claims ---------------------------------------------------------------

    def _tick_key(self, job: str, tick: float) -> str:
        return kv_key("tick", job, str(int(tick)))

    async def claim_tick(self, job: str, tick: float, holder: str) -> bool:
        """Claim a scheduled tick; call only while holding the job's lease."""
        key = self._tick_key(job, tick)
        now = self.clock()
        try:
            await self.ticks.create(key, TickClaim(holder=holder, claimed_at=now))
            return True
        except AlreadyExists:
            pass
        got = await self.ticks.get(key)
        if got is None or got[0].done:
            return False
        cur, rev = got
        # Not done, and we hold the lease: its claimer lost the lease (died mid-run).
        try:
            await self.ticks.update(key, TickClaim(holder=holder, claimed_at=now,
                                                   taken_over_from=cur.holder), last=rev)
        except Conflict:
            return False
        log.info("taking over tick %d of %s from %s", int(tick), job, cur.holder)
        return True

    async def finish_tick(self, job: str, tick: float, holder: str) -> None:
        key = self._tick_key(job, tick)
        got = await self.ticks.get(key)
        if got is None or got[0].holder != holder:
            return
        done = msgspec.structs.replace(got[0], done=True, finished_at=self.clock())
        with contextlib.suppress(Conflict):
            await self.ticks.update(key, done, last=got[1])
        # Older claims can never matter again (only the latest due tick is claimed).
        for k in await self.ticks.keys(kv_key("tick", job) + "."):
            if int(kv_key_parts(k)[2]) < int(tick):
                with contextlib.suppress(Conflict, NotFound):
                    await self.ticks.delete(k)

    async def tick_claim(self, job: str, tick: float) -> TickClaim | None:
        got = await self.ticks.get(self._tick_key(job, tick))
        return got[0] if got else None
