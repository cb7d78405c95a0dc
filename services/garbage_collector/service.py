"""The garbage-collector service: on-demand runs over the bus, and cron-scheduled ones.

Any number of replicas may run; they share schedules, policies, excludes, reports, leases
and tick claims in KV `dockyard-gc`, so a scheduled job runs once per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from shared import bus, cron, subjects
from shared.config import Config
from shared.errors import InvalidArgument
from shared import codec
from shared.messages.common import Empty, Progress
from shared.messages.gc import (ALL_JOBS, ExcludeReply, ExcludeRequest, JobReport, JobStatus, Policy,
                                PolicyRequest, RunReply, RunRequest, ScheduleReply,
                                ScheduleRequest, StatusReply)
from shared.registry_meta import RegistryMeta
from services.garbage_collector.collector import Collector
from services.garbage_collector.jobs import JobContext, Settings, expand
from services.garbage_collector.lease import Leases
from services.garbage_collector.scheduler import Scheduler
from services.garbage_collector.state import GcState

log = logging.getLogger("dockyard.gc")


class GarbageCollector:
    """The bus handlers over one replica's collector and scheduler."""

    def __init__(self, ctx: JobContext, leases: Leases):
        self.ctx = ctx
        self.leases = leases
        self.collector = Collector(ctx, leases)
        self.scheduler = Scheduler(self.collector, leases)

    @classmethod
    async def open(cls, nc, settings: Settings, *, replica: str = "",
                   lease_ttl: float = 60.0) -> "GarbageCollector":
        state = await GcState.open(nc, suffix=settings.state_suffix)
        meta = await RegistryMeta.open(nc, suffix=settings.registry_suffix)
        ctx = JobContext(nc=nc, bus=bus.BusClient(nc), state=state, meta=meta, settings=settings,
                         replica=replica or f"gc-{uuid.uuid4().hex[:8]}")
        return cls(ctx, Leases(state.kv, ttl=lease_ttl))

    def register(self, svc: bus.BusService) -> None:
        svc.endpoint(subjects.GC_RUN, RunRequest, self.on_run)
        svc.endpoint(subjects.GC_STATUS, Empty, self.on_status)
        svc.endpoint(subjects.GC_SCHEDULE, ScheduleRequest, self.on_schedule)
        svc.endpoint(subjects.GC_POLICY, PolicyRequest, self.on_policy)
        svc.endpoint(subjects.GC_EXCLUDE, ExcludeRequest, self.on_exclude)

    async def on_run(self, req: RunRequest) -> RunReply:
        expand(req.jobs)  # unknown names fail before anything runs
        return RunReply(reports=await self.collector.run(req, on_job=self._progress(req.progress_inbox)))

    def _progress(self, inbox: str):
        """Each job to the requester's inbox as it starts ("step") and ends ("report": its
        JobReport as JSON in `data`)."""
        if not inbox:
            return None

        async def on_job(no: int, total: int, job: str, report: JobReport | None) -> None:
            if report is None:
                p = Progress(kind="step", message=job, step=no, total_steps=total)
            else:
                p = Progress(kind="report", message=job, data=codec.encode(report), step=no, total_steps=total)
            await bus.publish_progress(self.ctx.nc, inbox, p)
        return on_job

    async def on_status(self, _: Empty) -> StatusReply:
        state = self.ctx.state
        now = self.ctx.clock()
        scheds = {s.job: s for s in await state.list_schedules()}
        jobs = []
        for job in ALL_JOBS:
            s = scheds.get(job)
            jobs.append(JobStatus(job=job, schedule=s.cron if s else "",
                                  next_run=cron.next_tick(s.cron, now) if s else 0.0,
                                  last=await state.last_report(job),
                                  running_on=await self.leases.holder(job)))
        return StatusReply(jobs=jobs, policies=sorted(await state.list_policies(), key=lambda p: p.repo),
                           excludes=await state.list_excludes())

    async def on_schedule(self, req: ScheduleRequest) -> ScheduleReply:
        jobs = expand([req.job])
        if req.cron.strip():
            expr = cron.validate(req.cron)
            for job in jobs:
                await self.ctx.state.put_schedule(job, expr, self.ctx.clock())
        else:
            for job in jobs:
                await self.ctx.state.remove_schedule(job)
        return ScheduleReply(schedules=sorted(await self.ctx.state.list_schedules(),
                                              key=lambda s: s.job))

    async def on_policy(self, req: PolicyRequest) -> Policy:
        if not req.repo:
            raise InvalidArgument("a policy needs a repository")
        if req.remove:
            await self.ctx.state.remove_policy(req.repo)
            return Policy(repo=req.repo)
        if req.keep_last is not None and req.keep_last < 0:
            raise InvalidArgument("--keep-last must not be negative")
        within = cron.parse_duration(req.keep_within) if req.keep_within else None
        policy = Policy(repo=req.repo, keep_last=req.keep_last, keep_within_seconds=within,
                        keep_tags=list(req.keep_tags))
        if policy.is_empty():
            raise InvalidArgument("a policy needs --keep-last, --keep-within or --keep-tags")
        await self.ctx.state.put_policy(policy)
        return policy

    async def on_exclude(self, req: ExcludeRequest) -> ExcludeReply:
        if not req.pattern.strip():
            raise InvalidArgument("an exclude needs a pattern")
        if req.remove:
            await self.ctx.state.remove_exclude(req.pattern.strip())
        else:
            await self.ctx.state.add_exclude(req.pattern.strip())
        return ExcludeReply(excludes=await self.ctx.state.list_excludes())


async def serve(cfg: Config) -> None:
    """Run one garbage-collector replica until cancelled."""
    settings = Settings.from_config(cfg)
    ttl = cron.parse_duration(cfg.env("GC_LEASE_TTL", "60"))
    nc = await bus.connect(cfg.nats_url, name="garbage-collector")
    svc = None
    sched_task = None
    try:
        gc = await GarbageCollector.open(nc, settings, lease_ttl=ttl,
                                         replica=f"{cfg.host_id}-{uuid.uuid4().hex[:6]}")
        svc = bus.BusService(nc, subjects.GARBAGE_COLLECTOR, description="dockyard garbage-collector",
                             metadata={"replica": gc.ctx.replica})
        gc.register(svc)
        sched_task = asyncio.create_task(gc.scheduler.run_forever())
        await svc.start()
        log.info("garbage-collector %s ready", gc.ctx.replica)
        await asyncio.Event().wait()
    finally:
        if svc is not None:
            await svc.stop()
        if sched_task is not None:
            sched_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sched_task
            await gc.scheduler.stop()
        with contextlib.suppress(Exception):
            await nc.drain()
