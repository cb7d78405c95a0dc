"""Container events: published live on the bus, and kept for `events --since` (docker's names).

Live: `dockyard.events.container.<agent_id>.<action>`. Kept: the last MAX_KEPT events in
memory and in `events.jsonl` (appended; rewritten to its newest half when it grows past
MAX_FILE_BYTES), so that an agent restart does not forget what happened before it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from pathlib import Path

import msgspec

from shared import codec, subjects
from shared.fsutil import write_atomic
from shared.messages.agent import Container
from shared.messages.verbs import ContainerEvent

log = logging.getLogger("dockyard.agent.events")

MAX_KEPT = 4096
MAX_FILE_BYTES = 4 << 20


def subject(agent_id: str, action: str) -> str:
    return f"{subjects.EVENT_CONTAINER}.{agent_id}.{action}"


class EventLog:
    def __init__(self, nc, agent_id: str, path: Path):
        self.nc = nc
        self.agent_id = agent_id
        self.path = path
        self.kept: collections.deque[ContainerEvent] = collections.deque(maxlen=MAX_KEPT)
        self._pending: set[asyncio.Task] = set()
        self._load()

    def _load(self) -> None:
        dec = codec.decoder(ContainerEvent)
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        for ln in lines[-MAX_KEPT:]:
            try:
                self.kept.append(dec.decode(ln))
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # a line torn by a crash

    def record(self, action: str, c: Container, attributes: dict[str, str]) -> ContainerEvent:
        ev = ContainerEvent(action=action, id=c.id, image=c.config.image, name=c.name, host=self.agent_id,
                            time_nano=time.time_ns(),
                            attributes={"image": c.config.image, "name": c.name, **attributes})
        self.kept.append(ev)
        data = codec.encode(ev)
        try:
            self._append(data)
        except OSError as e:
            log.warning("events: cannot keep %s: %s", action, e)
        try:
            t = asyncio.get_running_loop().create_task(self.nc.publish(subject(self.agent_id, action), data))
        except RuntimeError:
            return ev  # no loop (a test of the log alone)
        self._pending.add(t)
        t.add_done_callback(self._pending.discard)
        return ev

    def _append(self, data: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(data + b"\n")
            size = f.tell()
        if size > MAX_FILE_BYTES:
            keep = list(self.kept)[-MAX_KEPT // 2:]
            write_atomic(self.path, b"".join(codec.encode(e) + b"\n" for e in keep))

    def between(self, since: float, until: float) -> list[ContainerEvent]:
        lo = _nanos(since) or 0
        hi = _nanos(until)
        return [e for e in self.kept if e.time_nano >= lo and (hi is None or e.time_nano <= hi)]



def _nanos(t: float) -> int | None:
    """Unix seconds as nanoseconds; 0, negative, NaN or beyond the year 5000: unbounded (None)."""
    if not t or t != t or t <= 0 or t > 95_617_584_000:
        return None
    return int(t * 1e9)
