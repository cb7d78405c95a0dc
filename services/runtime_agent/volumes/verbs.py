"""The agent's `volume create|ls|inspect|rm|prune` verbs, over its VolumeStore and containers."""

from __future__ import annotations

import asyncio

from services.runtime_agent.volumes.mounts import users
from services.runtime_agent.volumes.store import VolumeStore
from shared import subjects
from shared.errors import Conflict, NotFound
from shared.messages import volumes as vm
from shared.messages.agent import fleet


class VolumeVerbs:
    def __init__(self, store: VolumeStore, containers):
        self.store = store
        self.containers = containers  # services.runtime_agent.containers.manager.Containers

    def register(self, svc, agent_id: str, queue: str) -> None:
        verbs = [(vm.VERB_VOLUME_CREATE, vm.VolumeCreateRequest, self.create, {}),
                 (vm.VERB_VOLUME_LS, vm.VolumeListRequest, self.ls, {"empty_ok": True}),
                 (vm.VERB_VOLUME_INSPECT, vm.VolumeRef, self.inspect, {}),
                 (vm.VERB_VOLUME_RM, vm.VolumeRmRequest, self.rm, {}),
                 (vm.VERB_VOLUME_PRUNE, vm.VolumePruneRequest, self.prune, {})]  # destructive: never by default
        for verb, typ, handler, bounds in verbs:
            svc.endpoint(subjects.agent(agent_id, verb), typ, handler, queue=queue, **bounds)
        svc.endpoint(fleet(vm.VERB_VOLUME_LS), vm.VolumeListRequest, self.ls, queue=queue, empty_ok=True)

    def _used_by(self, name: str) -> list[str]:
        return [c.id for c in users(self.containers.store.all(), name)]

    async def _reply(self, rec: vm.VolumeRecord, size: bool) -> vm.VolumeReply:
        n = await asyncio.to_thread(self.store.size, rec.name) if size else -1
        return vm.VolumeReply(volume=rec, used_by=self._used_by(rec.name), size=n)

    async def create(self, req: vm.VolumeCreateRequest) -> vm.VolumeReply:
        rec = self.store.create(req.name, driver=req.driver, options=req.options, labels=req.labels)
        return await self._reply(rec, False)

    async def ls(self, req: vm.VolumeListRequest) -> vm.VolumeListReply:
        out = []
        for rec in self.store.all():
            used = self._used_by(rec.name)
            if req.dangling is not None and req.dangling != (not used):
                continue
            if req.name and req.name not in rec.name:
                continue
            if not vm.label_matches(rec.labels, req.labels):
                continue
            out.append(await self._reply(rec, req.size))
        return vm.VolumeListReply(host=self.store.host, volumes=out)

    async def inspect(self, req: vm.VolumeRef) -> vm.VolumeReply:
        return await self._reply(self.store.get(req.name), req.size)

    async def rm(self, req: vm.VolumeRmRequest) -> vm.VolumeRmReply:
        if self.store.find(req.name) is None:
            if req.force:
                return vm.VolumeRmReply(name=req.name, removed=False)
            raise NotFound(f"no such volume: {req.name}")
        self.refuse_in_use(req.name)
        await asyncio.to_thread(self.store.remove, req.name)
        return vm.VolumeRmReply(name=req.name)

    def _pinned(self, name: str) -> bool:
        """Made for a run whose container does not exist yet."""
        return name in self.containers.volumes.pinned

    def refuse_in_use(self, name: str) -> None:
        using = users(self.containers.store.all(), name)
        if not using and self._pinned(name):
            raise Conflict(f"volume {name} is in use by a container being created")
        if using:
            shown = ", ".join(f"{c.name} ({c.id[:12]})" for c in using)
            raise Conflict(f"volume {name} is in use by container {shown}: remove the container first")

    async def prune(self, req: vm.VolumePruneRequest) -> vm.VolumePruneReply:
        removed, reclaimed = [], 0
        for rec in self.store.all():
            if not (req.all or rec.anonymous) or self._used_by(rec.name) or self._pinned(rec.name):
                continue
            if not vm.label_matches(rec.labels, req.labels):
                continue
            reclaimed += await asyncio.to_thread(self.store.size, rec.name)
            if not req.dry_run:
                await asyncio.to_thread(self.store.remove, rec.name)
            removed.append(rec.name)
        return vm.VolumePruneReply(host=self.store.host, removed=removed, reclaimed=reclaimed)
