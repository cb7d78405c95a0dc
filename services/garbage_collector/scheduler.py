"""Cron schedules shared by every replica; each tick of a job runs on exactly one of them.

Every replica wakes at the next due tick, takes the job's lease and claims the tick
(`Leases.claim_tick`); the loser of either race leaves the tick alone. A replica that dies
mid-run stops renewing its lease: after the TTL another takes the lease and finds the
tick claimed but not done, so it runs it.
"""

from __future__ import annotations

import asyncio
import logging

from shared import cron
from shared.errors import DockyardError
from shared.messages.gc import RunRequest, Schedule
from services.garbage_collector.collector import Collector
from services.garbage_collector.jobs import Options
from services.garbage_collector.lease import Leases

log = logging.getLogger("dockyard.gc.scheduler")

MAX_SLEEP = 1.0  # also how soon a new schedule or a freed lease is noticed


class Scheduler:
    def __init__(self, collector: Collector, leases: Leases):
        self.collector = collector
        self.leases = leases
        self.ctx = collector.ctx
        self._served: dict[str, float] = {}  # job -> last tick seen run or claimed
        self._running: dict[str, asyncio.Task] = {}

    async def run_forever(self) -> None:
        while True:
            try:
                delay = await self.poll_once()
            except DockyardError as e:
                log.warning("scheduler: %s", e.message)
                delay = MAX_SLEEP
            await asyncio.sleep(delay)

    async def poll_once(self) -> float:
        """Start every due tick not yet served; seconds until the next check."""
        now = self.ctx.clock()
        delay = MAX_SLEEP
        for sched in await self.ctx.state.list_schedules():
            delay = min(delay, max(0.02, cron.next_tick(sched.cron, now) - now))
            tick = self.due(sched, now)
            if tick is None or sched.job in self._running:
                continue
            task = asyncio.create_task(self.serve_tick(sched.job, tick))
            self._running[sched.job] = task
            task.add_done_callback(lambda _t, job=sched.job: self._running.pop(job, None))
        return delay

    def due(self, sched: Schedule, now: float) -> float | None:
        tick = cron.latest_tick(sched.cron, now)
        if tick < sched.created_at or self._served.get(sched.job, -1.0) >= tick:
            return None  # before the schedule existed, or already served
        return tick

    async def serve_tick(self, job: str, tick: float) -> None:
        try:
            async with self.leases.held(job, self.ctx.replica) as lease:
                if lease is None:
                    return  # running elsewhere; look again at the next poll
                if await self.leases.claim_tick(job, tick, self.ctx.replica):
                    opts = Options.of(RunRequest(jobs=[job]), self.ctx.settings)
                    report = await self.collector.run_locked(job, opts, lease, trigger="schedule",
                                                             tick=tick)
                    if not lease.lost.is_set():
                        await self.leases.finish_tick(job, tick, self.ctx.replica)
                    await self.collector.announce([report], False, "schedule")
                self._served[job] = tick
        except DockyardError as e:
            log.warning("scheduled %s at %d: %s", job, int(tick), e.message)
        except Exception:
            log.exception("scheduled %s at %d", job, int(tick))

    async def stop(self) -> None:
        for t in list(self._running.values()):
            t.cancel()
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)
