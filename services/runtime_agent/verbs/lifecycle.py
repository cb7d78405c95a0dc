"""wait, restart, rename, pause/unpause and update of a container on this agent.

They work on the container manager's records and locks: the record stays the one truth
`ps` and `inspect` show, and what `update` changes is kept there, so the next `start`
builds its spec (and cgroup) with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import msgspec

from services.runtime_agent.containers.config import parse_restart
from services.runtime_agent.containers.manager import Containers
from services.runtime_agent.containers.store import check_name
from services.runtime_agent.verbs import cgroupctl
from shared.errors import AlreadyExists, Conflict, InvalidArgument
from shared.messages.agent import Container
from shared.messages.verbs import UpdateRequest, WaitReply
from shared.runtime.spec import MIN_MEMORY_BYTES


async def wait(cs: Containers, ref: str, timeout: float) -> WaitReply:
    c = cs.store.resolve(ref)
    if not 0 <= timeout <= 300:  # NaN too
        timeout = 30.0
    final = cs.run_ended(c.id)
    if c.state.status == "running" and final is not None:
        try:
            code = await asyncio.wait_for(asyncio.shield(final), timeout)
        except asyncio.TimeoutError:
            return WaitReply(id=c.id, running=True)
        return WaitReply(id=c.id, exit_code=code if code is not None else 255)
    if c.state.status == "running":  # between its start and its monitor: look again shortly
        return WaitReply(id=c.id, running=True)
    return WaitReply(id=c.id, exit_code=c.state.exit_code if c.state.exit_code is not None else 0)


async def restart(cs: Containers, ref: str, timeout: float | None) -> Container:
    c = cs.store.resolve(ref)
    await cs.stop(c.id, timeout)
    c = await cs.start(c.id)
    cs.event("restart", c)
    return c


async def rename(cs: Containers, ref: str, name: str) -> Container:
    c = cs.store.resolve(ref)
    check_name(name)
    async with cs._lock(c.id):
        c = cs.store.get(c.id)
        if c.name == name:
            raise InvalidArgument(f"renaming a container with the same name as its current name: {name}")
        if any(o.name == name for o in cs.store.all()):
            raise AlreadyExists(f'the container name "/{name}" is already in use')
        old = c.name
        c = msgspec.structs.replace(c, name=name)
        cs.store.save(c)
    cs.event("rename", c, oldName=old)
    return c


async def pause(cs: Containers, ref: str, paused: bool) -> Container:
    c = cs.store.resolve(ref)
    async with cs._lock(c.id):
        c = cs.store.get(c.id)
        if c.state.status != "running":
            raise Conflict(f"container {c.id[:12]} is not running")
        if c.state.paused == paused:
            raise Conflict(f"container {c.id[:12]} is {'already' if paused else 'not'} paused")
        await asyncio.to_thread(cgroupctl.freeze if paused else cgroupctl.thaw, cs.cgroup_parent, c.id)
        c = msgspec.structs.replace(c, state=msgspec.structs.replace(c.state, paused=paused))
        cs.store.save(c)
    cs.event("pause" if paused else "unpause", c)
    return c


async def update(cs: Containers, req: UpdateRequest) -> Container:
    c = cs.store.resolve(req.container)
    async with cs._lock(c.id):
        c = cs.store.get(c.id)
        new = _updated(c, req)
        if c.state.status == "running":
            lim, old = new.config.limits, c.config.limits
            mem = lim.memory if lim.memory != old.memory else None
            if lim.memory_swap != old.memory_swap:
                swap = lim.memory_swap
            elif mem is not None and lim.memory_swap in (None, 0):
                swap = 2 * mem  # docker's default memory+swap, as at `run`
            else:
                swap = None
            f, of = new.config.flags, c.config.flags
            await asyncio.to_thread(
                cgroupctl.set_limits, cs.cgroup_parent, c.id, memory=mem,
                swap=swap,
                cpu_shares=lim.cpu_shares if lim.cpu_shares != old.cpu_shares else None,
                cpus=f.cpus if f.cpus != of.cpus else None,
                pids_limit=f.pids_limit if f.pids_limit != of.pids_limit else None)
        cs.store.save(new)
    with contextlib.suppress(Exception):
        cs._changed()  # the heartbeat's reserved memory follows the new limit
    cs.event("update", new)
    return new


def _updated(c: Container, req: UpdateRequest) -> Container:
    """The record with the request's limits: checked as `run` checks them."""
    lim = c.config.limits
    memory, swap = lim.memory, lim.memory_swap
    if req.memory:  # 0 leaves it as it is, as docker's does
        if req.memory < MIN_MEMORY_BYTES:
            raise InvalidArgument("minimum memory limit allowed is 6MB")
        memory = req.memory
        if req.memory_swap is None and swap not in (None, 0, -1) and memory is not None and memory > swap:
            raise InvalidArgument("memory limit should be smaller than already set memoryswap limit, "
                                  "update the memoryswap at the same time")
    if req.memory_swap is not None:
        swap = req.memory_swap
        if swap > 0 and (memory is None or swap < memory):
            raise InvalidArgument("minimum memory-swap limit should be larger than memory limit")
    if req.pids_limit is not None and req.pids_limit > 1 << 31 or req.memory and req.memory > 1 << 62:
        raise InvalidArgument("limit out of range")
    if req.memory_swap is not None and req.memory_swap > 1 << 62:
        raise InvalidArgument("memory-swap out of range")
    if req.cpu_shares is not None and not 0 <= req.cpu_shares <= 262144:
        raise InvalidArgument("cpu-shares must be between 0 and 262144")
    flags = c.config.flags
    if req.cpus is not None:
        n = os.cpu_count() or 1
        if not 0 <= req.cpus <= n:
            raise InvalidArgument(f"range of CPUs is from 0.01 to {n}.00, as there are only {n} CPUs available")
        flags = msgspec.structs.replace(flags, cpus=req.cpus)
    if req.pids_limit is not None:
        if req.pids_limit < -1:
            raise InvalidArgument(f"invalid --pids-limit {req.pids_limit}")
        flags = msgspec.structs.replace(flags, pids_limit=req.pids_limit)
    restart = c.config.restart
    if req.restart is not None:
        restart = parse_restart(req.restart)
        if c.config.auto_remove and restart.name != "no":
            raise InvalidArgument("restart policy cannot be updated because AutoRemove is enabled for the container")
    limits = msgspec.structs.replace(lim, memory=memory, memory_swap=swap,
                                     cpu_shares=req.cpu_shares if req.cpu_shares is not None else lim.cpu_shares)
    config = msgspec.structs.replace(c.config, limits=limits, flags=flags, restart=restart)
    return msgspec.structs.replace(c, config=config)
