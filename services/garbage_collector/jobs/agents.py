"""Ask every runtime-agent to prune: exited containers past a limit, then unused images.

The agents are the ones with a heartbeat in KV `dockyard-agents`. Each agent decides what
is in use (an image of a running or stopped container is never removed) and honours the
exclude patterns (`dockyard gc exclude`), like docker-gc's exclude file.
"""

from __future__ import annotations

import asyncio
import time

import msgspec

from shared import subjects
from shared.bus import kv_key_parts
from shared.errors import DockyardError
from shared.messages.agent import HEARTBEAT_STALE
from shared.messages.gc import AGENT_PRUNE_VERB, JobReport, PruneReply, PruneRequest
from services.garbage_collector import kvscan
from services.garbage_collector.jobs import JobContext, Options


class _Heartbeat(msgspec.Struct):
    """The fields of an agent heartbeat the GC needs (the agent owns the full record)."""

    agent_id: str = ""
    id: str = ""
    time: float = 0.0


async def agent_ids(ctx: JobContext) -> list[str]:
    """The live agents: a lost one keeps its last heartbeat in the bucket but cannot answer."""
    beats = await kvscan.scan(ctx.nc, subjects.KV_AGENTS, _Heartbeat)
    now = time.time()
    return sorted({hb.agent_id or hb.id or kv_key_parts(key)[-1] for key, hb, _ in beats
                   if now - hb.time < HEARTBEAT_STALE})


async def run(ctx: JobContext, opts: Options, report: JobReport) -> None:
    exclude = await ctx.state.list_excludes()
    req = PruneRequest(exited_before_seconds=opts.exited_before, exclude=exclude,
                       dry_run=opts.dry_run)
    ids = await agent_ids(ctx)

    async def one(agent: str) -> PruneReply | DockyardError:
        try:
            return await ctx.bus.request(subjects.agent(agent, AGENT_PRUNE_VERB), req,
                                         PruneReply, timeout=120)
        except DockyardError as e:
            return e

    errors = []
    for agent, rep in zip(ids, await asyncio.gather(*(one(a) for a in ids))):
        if isinstance(rep, DockyardError):
            errors.append(f"{agent}: {rep.message}")
            continue
        report.examined += rep.examined
        report.removed += rep.removed
        report.freed += rep.freed
        report.items.extend(f"{agent}/{item}" for item in rep.items)
    report.error = "; ".join(errors)
