"""Ask the builder to drop cache records (and their layers) by age and size budget, LRU first."""

from __future__ import annotations

from shared import subjects
from shared.messages.gc import JobReport, PruneReply, PruneRequest
from services.garbage_collector.jobs import JobContext, Options


async def run(ctx: JobContext, opts: Options, report: JobReport) -> None:
    rep = await ctx.bus.request(
        subjects.BUILDER_PRUNE,
        PruneRequest(max_age_seconds=opts.cache_max_age, max_bytes=opts.cache_max_bytes,
                     dry_run=opts.dry_run),
        PruneReply, timeout=300)
    report.examined, report.removed, report.freed = rep.examined, rep.removed, rep.freed
    report.items = list(rep.items)
