"""Untagged manifests past their retention, and per-repository retention policies.

The plan comes from `mark.plan_retention`: a manifest goes only when nothing kept reaches
it, so the children of a tagged index (untagged by nature) and manifests with kept
referrers stay. Deletes go through RegistryMeta with the revision read in the snapshot:
a link that changed since (re-pushed, tagged, bumped by a push) is kept.
"""

from __future__ import annotations

import logging

from shared.errors import Conflict
from shared.messages.gc import JobReport
from shared.oci.digest import Digest
from services.garbage_collector import snapshot
from services.garbage_collector.jobs import JobContext, Options
from services.garbage_collector.mark import Retention, plan_retention

log = logging.getLogger("dockyard.gc.untagged")


async def policies(ctx: JobContext) -> dict[str, Retention]:
    return {p.repo: Retention(keep_last=p.keep_last, keep_within=p.keep_within_seconds,
                              keep_tags=tuple(p.keep_tags))
            for p in await ctx.state.list_policies()}


async def run(ctx: JobContext, opts: Options, report: JobReport) -> None:
    now = ctx.clock()
    snap = await snapshot.load(ctx.nc, ctx.settings.registry_suffix)
    plan = plan_retention(snap.graph, now, opts.untagged_retention, await policies(ctx))
    report.examined = len(snap.graph.manifests)
    items: list[str] = []
    # Tags first (a policy's): a manifest is deletable only once no tag points at it.
    for repo, tag in plan.tags:
        dgst = snap.graph.tags[(repo, tag)]
        if not opts.dry_run:
            if await ctx.meta.delete_tag(repo, tag, expect=Digest(dgst)) is None:
                report.kept += 1  # moved meanwhile: the new target is not ours to judge
                continue
        items.append(f"{repo}:{tag}")
    for repo, dgst in plan.manifests:
        key = (repo, dgst)
        if not opts.dry_run:
            try:
                gone = await ctx.meta.delete_manifest(repo, Digest(dgst),
                                                      revision=snap.revisions[key])
            except Conflict:
                report.kept += 1  # tagged or re-pushed since the snapshot
                continue
            if gone is None:
                continue
        report.removed += 1
        report.freed += snap.sizes.get(key, 0)
        items.append(f"{repo}@{dgst}")
    report.items = items
