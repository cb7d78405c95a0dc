"""The everyday verbs of issue 11 on the agent that holds the container (shared.messages.verbs).

`Verbs(agent).register(svc, queue)` adds their endpoints beside the agent's own; each
module does one verb group: lifecycle (wait, restart, rename, pause, update), inspect
(top, stats), events, files (cp, diff, export) and commit.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.runtime_agent.verbs import files, inspect, lifecycle
from services.runtime_agent.verbs.cpplane import CopyPlane
from services.runtime_agent.verbs.events import EventLog
from shared import subjects
from shared.messages import verbs as v
from shared.messages.agent import ContainerRef, fleet


class Verbs:
    def __init__(self, agent, root: Path):
        self.agent = agent
        self.cs = agent.containers
        self.events = EventLog(agent.nc, agent.id, root / "events.jsonl")
        self.cs.on_event = self.events.record
        self.sampler = inspect.Sampler(self.cs.cgroup_parent)
        self.plane = CopyPlane(self.cs.inspect, lambda c: files.root_of(self.cs, c))  # cp's bytes, on loopback

    def register(self, svc, queue: str) -> None:
        aid = self.agent.id
        verbs = [
            (v.VERB_WAIT, v.WaitRequest, self.wait), (v.VERB_RESTART, v.RestartRequest, self.restart),
            (v.VERB_RENAME, v.RenameRequest, self.rename), (v.VERB_PAUSE, ContainerRef, self.pause),
            (v.VERB_UNPAUSE, ContainerRef, self.unpause), (v.VERB_UPDATE, v.UpdateRequest, self.update),
            (v.VERB_EVENTS, v.EventsRequest, self.kept_events),
            (v.VERB_TOP, v.TopRequest, self.top),
            (v.VERB_DIFF, ContainerRef, self.diff), (v.VERB_CP_FROM, v.CopyFromRequest, self.cp_from),
            (v.VERB_CP_TO, v.CopyToRequest, self.cp_to), (v.VERB_EXPORT, v.ExportRequest, self.export),
            (v.VERB_COMMIT, v.CommitRequest, self.commit),
        ]
        for verb, typ, handler in verbs:
            svc.endpoint(subjects.agent(aid, verb), typ, handler, queue=queue)
        svc.endpoint(fleet(v.VERB_EVENTS), v.EventsRequest, self.kept_events, queue=queue, empty_ok=True)
        svc.endpoint(fleet(v.VERB_STATS), v.FleetStatsRequest, self.fleet_stats, queue=queue, empty_ok=True)

    async def wait(self, req: v.WaitRequest) -> v.WaitReply:
        return await lifecycle.wait(self.cs, req.container, req.timeout)

    async def restart(self, req: v.RestartRequest) -> v.ContainerVerbReply:
        return v.ContainerVerbReply(container=await lifecycle.restart(
            self.cs, req.container, req.timeout if req.timeout_given else None))

    async def rename(self, req: v.RenameRequest) -> v.ContainerVerbReply:
        return v.ContainerVerbReply(container=await lifecycle.rename(self.cs, req.container, req.name))

    async def pause(self, req: ContainerRef) -> v.ContainerVerbReply:
        return v.ContainerVerbReply(container=await lifecycle.pause(self.cs, req.container, True))

    async def unpause(self, req: ContainerRef) -> v.ContainerVerbReply:
        return v.ContainerVerbReply(container=await lifecycle.pause(self.cs, req.container, False))

    async def update(self, req: v.UpdateRequest) -> v.ContainerVerbReply:
        return v.ContainerVerbReply(container=await lifecycle.update(self.cs, req))

    async def top(self, req: v.TopRequest) -> v.TopReply:
        return await inspect.top(self.cs.inspect(req.container), self.cs.cgroup_parent, req.ps_args)

    async def fleet_stats(self, req: v.FleetStatsRequest) -> v.FleetStatsReply:
        """`stats` of many containers in one request: one sampling trip for all of them."""
        if req.match:
            picked = [(ref, c) for ref in dict.fromkeys(req.match) for c in self.cs.list(True, ref)]
        else:
            picked = [("", c) for c in self.cs.list(req.all)]
        pairs = await self.sampler.pairs([c for _, c in picked])
        return v.FleetStatsReply(host=self.agent.id, samples=[
            v.StatsSample(ref=ref, created=c.created, pre=pre, stats=cur)
            for (ref, c), (pre, cur) in zip(picked, pairs)])

    async def diff(self, req: ContainerRef) -> v.DiffReply:
        c = self.cs.inspect(req.container)
        return v.DiffReply(changes=await asyncio.to_thread(files.changes, self.cs, c))

    async def cp_from(self, req: v.CopyFromRequest) -> v.CopyFromReply:
        c = self.cs.inspect(req.container)
        if self.plane.serves(req.plane):  # checked and granted here; the bytes go over HTTP
            _, path, info = await files.stat_from(self.cs, c, req.path, req.follow_link)
            return v.CopyFromReply(stat=info, url=self.plane.grant_out(c.id, path, req.follow_link))
        info, sent = await files.copy_from(self.cs, self.agent.nc, c, req.path, req.follow_link, req.stream_inbox,
                                           raw=req.raw_chunks)
        return v.CopyFromReply(stat=info, sent=sent)

    async def cp_to(self, req: v.CopyToRequest) -> v.CopyToReply:
        c = self.cs.inspect(req.container)
        if self.plane.serves(req.plane):
            _, dest, rename = await files.target_to(self.cs, c, req.path, req.src_base)
            return v.CopyToReply(url=self.plane.grant_in(c.id, dest, rename, req.copy_uid_gid))
        written = await files.copy_to(self.cs, self.agent.nc, c, req.path, req.src_base, req.copy_uid_gid,
                                      req.stream_inbox)
        return v.CopyToReply(written=written)

    async def export(self, req: v.ExportRequest) -> v.ExportReply:
        c = self.cs.inspect(req.container)
        if self.plane.serves(req.plane):
            return v.ExportReply(url=self.plane.grant_out(c.id, files.EVERYTHING, False))
        return v.ExportReply(sent=await files.export(self.cs, self.agent.nc, c, req.stream_inbox, raw=req.raw_chunks))

    async def commit(self, req: v.CommitRequest) -> v.CommitReply:
        from services.runtime_agent.verbs.commit import commit
        return await commit(self.cs, self.agent.puller, self.cs.inspect(req.container), req)

    async def kept_events(self, req: v.EventsRequest) -> v.EventsReply:
        return v.EventsReply(host=self.agent.id, events=self.events.between(req.since, req.until))
