"""Abort upload sessions idle longer than a limit, freeing their staged bytes."""

from __future__ import annotations

from shared import subjects
from shared.errors import NotFound
from shared.messages.common import Empty
from shared.messages.gc import JobReport
from shared.messages.layer_store import AbortRequest, UploadListReply
from services.garbage_collector.jobs import JobContext, Options


async def run(ctx: JobContext, opts: Options, report: JobReport) -> None:
    now = ctx.clock()
    listing = await ctx.bus.request(subjects.UPLOAD_LIST, Empty(), UploadListReply, timeout=30)
    report.examined = len(listing.uploads)
    for up in sorted(listing.uploads, key=lambda u: u.id):
        if now - max(up.updated_at, up.started_at) <= opts.upload_idle:
            continue
        if not opts.dry_run:
            try:
                await ctx.bus.request(subjects.UPLOAD_ABORT, AbortRequest(id=up.id), Empty, timeout=30)
            except NotFound:
                continue  # committed or aborted meanwhile
            # The registry's record of which repository the session belonged to.
            await ctx.meta.end_upload(up.id)
        report.removed += 1
        report.freed += up.size
        report.items.append(up.id)
