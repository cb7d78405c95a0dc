"""Heartbeats: this host's capacity in the `dockyard-agents` KV bucket, every few seconds.

A host that stops beating keeps its last entry: readers call it lost once that is
older than HEARTBEAT_STALE (within 10 s of its death, see shared.placement), and the
bucket's max age (HEARTBEAT_TTL) forgets it after a day. The same agent id beating
again is the host back. A clean shutdown deletes its entry at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable

import nats.errors

from shared import subjects
from shared.bus import TypedKV, kv_key
from shared.errors import DockyardError, Unavailable
from shared.messages.agent import HEARTBEAT_INTERVAL, HEARTBEAT_TTL, Heartbeat

log = logging.getLogger("dockyard.agent.heartbeat")

POKE_DELAY = 0.05  # seconds from a container's start or exit to the heartbeat that shows it


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                out[key] = int(parts[0]) * 1024
    return out


def capacity(memory_override: int | None, reserved: int) -> tuple[int, int]:
    """(memory offered to containers, memory not yet promised to running containers' limits)."""
    info = meminfo()
    total = memory_override or info.get("MemTotal", 0)
    available = total if memory_override else min(total, info.get("MemAvailable", total))
    return total, max(0, available - reserved)


async def open_bucket(nc) -> TypedKV:
    kv = await TypedKV.open(nc, subjects.KV_AGENTS, Heartbeat, ttl=HEARTBEAT_TTL,
                            description="runtime-agent heartbeats")
    await _keep_lost_hosts(nc.jetstream())
    return kv


async def _keep_lost_hosts(js) -> None:
    """A bucket made by an older agent drops a silent host's entry within seconds: it could
    never be shown lost. Give it this version's max age."""
    stream = f"KV_{subjects.KV_AGENTS}"
    try:
        info = await js.stream_info(stream)
        if info.config.max_age != HEARTBEAT_TTL:
            await js.update_stream(info.config, max_age=HEARTBEAT_TTL)
    except nats.errors.Error as e:
        raise Unavailable(f"KV {subjects.KV_AGENTS}: cannot set its max age: {e}") from e


class Heartbeats:
    def __init__(self, kv: TypedKV, agent_id: str, beat: Callable[[], Heartbeat]):
        self.kv = kv
        self.key = kv_key(agent_id)
        self.beat = beat
        self._task: asyncio.Task | None = None
        self._poked: asyncio.Task | None = None
        self._dirty = False

    async def send(self) -> None:
        await self.kv.put(self.key, self.beat())

    async def start(self) -> None:
        await self.send()
        self._task = asyncio.create_task(self._loop())

    def poke(self) -> None:
        """Beat soon, off the beat: a container started or stopped, `agents` should say so."""
        self._dirty = True
        if self._task is not None and (self._poked is None or self._poked.done()):
            self._poked = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        # A short pause lets the reply to the verb go first and folds a burst of
        # changes (a `run --rm` of `true` starts and ends within it) into one write.
        await asyncio.sleep(POKE_DELAY)
        while self._dirty:
            self._dirty = False
            try:
                await self.send()
            except DockyardError as e:
                log.warning("heartbeat not sent: %s", e.message)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                await self.send()
            except DockyardError as e:
                log.warning("heartbeat not sent: %s", e.message)

    async def stop(self) -> None:
        for t in (self._task, self._poked):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        self._task = None
        with contextlib.suppress(DockyardError):
            await self.kv.delete(self.key)


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except OSError:
        return os.cpu_count() or 1


def now() -> float:
    return time.time()
