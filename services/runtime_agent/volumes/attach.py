"""A container's volumes over its life: made for `run`, seeded at start, anonymous ones gone with it.

Between a run making its volumes and its container record existing, the volumes
are pinned: `volume rm`/`prune` see them in use (as Containers pins a run's image).
"""

from __future__ import annotations

import contextlib
from collections import Counter

from services.runtime_agent.containers.config import confine_volumes
from services.runtime_agent.volumes import mounts as vmounts
from services.runtime_agent.volumes.store import VolumeStore
from shared.errors import InvalidArgument
from shared.messages.agent import Container, RunRequest, Volume


class Attach:
    def __init__(self, store: VolumeStore | None):
        self.store = store  # None: this host has no named volumes
        self.pinned: Counter[str] = Counter()

    def confined(self, wanted: list[Volume], roots: tuple[str, ...] | None, host: str) -> list[Volume]:
        """Host binds checked against the volume roots (in their place); volume mounts as they are."""
        binds = iter(confine_volumes([v for v in wanted if v.kind == "bind"], roots))
        out = [next(binds) if v.kind == "bind" else v for v in wanted]
        if self.store is None and any(v.kind == "volume" for v in out):
            raise InvalidArgument(f"named volumes are not available on {host}")
        return out

    def resolve(self, volumes: list[Volume], inherited: list[Volume], image_volumes: dict | None,
                req: RunRequest) -> list[Volume]:
        """The mounts in force: given, inherited (--volumes-from), the image's VOLUMEs; volumes made and pinned."""
        taken = {v.destination for v in volumes}
        volumes = volumes + [v for v in inherited if v.destination not in taken]
        taken |= {v.destination for v in inherited} | {t.path for t in req.flags.tmpfs}
        if self.store is None:
            return volumes
        volumes += vmounts.image_volumes(image_volumes, taken)
        if not any(v.kind == "volume" for v in volumes):
            return volumes
        labels = {m.source: m.labels for m in req.mounts if m.type == "volume" and m.source and m.labels}
        out = vmounts.materialize(volumes, self.store, labels)
        self.pinned.update(v.name for v in out if v.kind == "volume")
        return out

    def release(self, volumes: list[Volume], *, made: bool) -> None:
        """Unpin a run's volumes; if its container was never `made`, its anonymous volumes go."""
        for v in volumes:
            if v.kind != "volume":
                continue
            self.pinned[v.name] -= 1
            if self.pinned[v.name] <= 0:
                del self.pinned[v.name]
            if not made and v.anonymous:
                with contextlib.suppress(Exception):
                    self.store.remove(v.name)

    def seed(self, c: Container, root) -> None:
        """Mount each volume's device and do docker's copy-up into a new volume (in a thread)."""
        for v in c.config.volumes:
            if v.kind != "volume" or self.store is None:
                continue
            data = self.store.prepare(v.name)
            if self.store.get(v.name).needs_copy_up and not v.nocopy:
                vmounts.copy_up(root, v.destination, data)
                self.store.copied_up(v.name)

    def remove_anonymous(self, c: Container, others: list[Container]) -> None:
        """The anonymous volumes of removed container `c` that no other container uses."""
        if self.store is None:
            return
        for v in c.config.volumes:
            if (v.anonymous and self.store.find(v.name) is not None and not vmounts.users(others, v.name)
                    and v.name not in self.pinned):
                self.store.remove(v.name)
