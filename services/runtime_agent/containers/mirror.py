"""This agent's container records, mirrored to the `dockyard-containers` KV bucket.

The records on disk (store.py) stay the truth; the mirror lets `dockyard ps -a` show the
containers of an agent that is gone (stopped, crashed, its host lost) as `Unknown`, under
the agent's name, as docker shows a container whose state it cannot know. Keys are
`<agent id>.<container id>`; an agent may write only under its own id (shared/permissions).

Writes are coalesced and sent off the verb's path: a burst of changes to one container
(`run --rm true` is created, started, exited and removed within milliseconds) ends as one
put or one delete of its latest state. The environment is left out: it may hold secrets,
and the bucket is readable by every reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
import nats.errors

from shared import subjects
from shared.bus import TypedKV, kv_key
from shared.errors import DockyardError, Unavailable
from shared.messages.agent import Container

log = logging.getLogger("dockyard.agent.mirror")

RETRY_DELAY = 1.0  # seconds before a failed write is tried again (NATS away, a JetStream election)
# A removed container's key is purged with a marker that expires: a plain delete would leave
# one marker per container ever run in the stream, for ever.
PURGE_MARKER_TTL = 10.0


def mirrored(c: Container) -> Container:
    """What the bucket holds of a container: everything `ps` shows, not its environment."""
    return msgspec.structs.replace(c, config=msgspec.structs.replace(c.config, env=[]))


class ContainerMirror:
    def __init__(self, kv: TypedKV, agent_id: str, find):
        """`find(cid)`: the container's current record, or None once it is removed."""
        self.kv = kv
        self.agent_id = agent_id
        self.prefix = kv_key(agent_id) + "."
        self.find = find
        self._dirty: set[str] = set()
        self._written: set[str] = set()  # containers whose key holds a record
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None

    @classmethod
    async def open(cls, nc, agent_id: str, find) -> ContainerMirror:
        kv = await TypedKV.open(nc, subjects.KV_CONTAINERS, Container,
                                description="runtime-agents' container records, for ps of a gone agent")
        return cls(kv, agent_id, find)

    def key(self, cid: str) -> str:
        return self.prefix + kv_key(cid)

    async def start(self, cids: list[str]) -> None:
        """Mirror `cids` (every record on disk) and drop keys of containers removed meanwhile."""
        try:
            self._written = {k[len(self.prefix):] for k in await self.kv.keys(self.prefix)}
        except DockyardError as e:
            log.warning("container mirror: cannot list %s: %s", self.prefix, e.message)
        for cid in self._written | set(cids):  # the stale ones are purged
            self.mark(cid)
        self._task = asyncio.create_task(self._loop())

    def mark(self, cid: str) -> None:
        """Container `cid` changed (saved or removed): mirror its latest state soon."""
        self._dirty.add(cid)
        self._idle.clear()
        self._wake.set()

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every change so far is written; False if that took longer than `timeout`."""
        if self._task is None:
            return not self._dirty
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                cid = self._dirty.pop()
                try:
                    await self._write(cid)
                except Exception as e:  # noqa: BLE001 - the mirror lags, it never stops
                    log.warning("container mirror: %s not written: %s", cid[:12],
                                e.message if isinstance(e, DockyardError) else repr(e))
                    self._dirty.add(cid)
                    await asyncio.sleep(RETRY_DELAY)
            if not self._dirty:
                self._idle.set()

    async def _write(self, cid: str) -> None:
        c = self.find(cid)
        if c is not None:
            await self.kv.put(self.key(cid), mirrored(c))
            self._written.add(cid)
        elif cid in self._written:  # one created and removed between two writes was never written
            try:
                await self.kv.kv.purge(self.key(cid), msg_ttl=PURGE_MARKER_TTL)
            except nats.errors.Error as e:
                raise Unavailable(f"KV purge {self.key(cid)}: {e}") from e
            self._written.discard(cid)
