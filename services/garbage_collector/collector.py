"""Runs jobs under their lease, records their reports and announces each run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from shared.messages.gc import GcFinished, JobReport, RunRequest
from shared.subjects import EVENT_GC_FINISHED
from services.garbage_collector import metrics
from services.garbage_collector.jobs import JobContext, Options, expand, run_job
from services.garbage_collector.lease import Lease, Leases

log = logging.getLogger("dockyard.gc")
# (job number, jobs, job, its report or None when it starts)
OnJob = Callable[[int, int, str, JobReport | None], Awaitable[None]]


class Collector:
    def __init__(self, ctx: JobContext, leases: Leases):
        self.ctx = ctx
        self.leases = leases

    async def run(self, req: RunRequest, *, trigger: str = "manual",
                  on_job: OnJob | None = None) -> list[JobReport]:
        """Run the requested jobs in order; each real run holds its job's lease. `on_job` hears
        of each job as it starts (report None) and as it ends."""
        opts = Options.of(req, self.ctx.settings)
        reports: list[JobReport] = []
        jobs = expand(req.jobs)
        for no, job in enumerate(jobs, 1):
            if on_job is not None:
                await on_job(no, len(jobs), job, None)
            reports.append(await self._run_one(job, opts, trigger))
            if on_job is not None:
                await on_job(no, len(jobs), job, reports[-1])
        await self.announce(reports, opts.dry_run, trigger)
        return reports

    async def _run_one(self, job: str, opts: Options, trigger: str) -> JobReport:
        if opts.dry_run:  # changes nothing: needs no lease, may run beside a real run
            return await run_job(self.ctx, job, opts, trigger=trigger)
        async with self.leases.held(job, self.ctx.replica) as lease:
            if lease is None:
                holder = await self.leases.holder(job)
                return JobReport(job=job, trigger=trigger, replica=self.ctx.replica,
                                 error=f"already running on {holder or 'another replica'}")
            return await self.run_locked(job, opts, lease, trigger=trigger)

    async def run_locked(self, job: str, opts: Options, lease: Lease, *, trigger: str,
                         tick: float = 0.0) -> JobReport:
        """Run a job whose lease we hold; stop it if the lease is lost to another replica."""
        task = asyncio.create_task(run_job(self.ctx, job, opts, trigger=trigger, tick=tick))
        lost = asyncio.create_task(lease.lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            report = JobReport(job=job, trigger=trigger, tick=tick, replica=self.ctx.replica,
                               error="lost the job's lease to another replica: stopped")
        else:
            report = task.result()
        if not opts.dry_run:
            await self.ctx.state.put_report(report)
        log.info("gc %s (%s%s): examined %d, removed %d, freed %d bytes in %.3fs%s", job, trigger,
                 ", dry run" if opts.dry_run else "", report.examined, report.removed,
                 report.freed, report.duration, f"; {report.error}" if report.error else "")
        return report

    async def announce(self, reports: list[JobReport], dry_run: bool, trigger: str) -> None:
        metrics.record(reports, dry_run, trigger)
        await self.ctx.bus.publish(EVENT_GC_FINISHED,
                                   GcFinished(reports=reports, dry_run=dry_run, trigger=trigger))
