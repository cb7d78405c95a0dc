"""The repositories page's view of the registry metadata, kept current by KV watches.

Listing 1,000 repositories with their size and last push must not read every manifest link
per request: this view reads each link once when it appears in the bucket (the same KV
records the registry API serves from) and folds every later put or delete into per-repository
totals, so a page is a sort of what is already in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from shared import codec
from shared.bus import kv_key_parts
from shared.registry_meta import ManifestLink, RegistryMeta

log = logging.getLogger("dockyard.registry.ui")


@dataclass
class RepoSummary:
    name: str
    links: dict[str, ManifestLink] = field(default_factory=dict)  # manifest digest -> link

    @property
    def last_push(self) -> float:
        return max((m.pushed_at for m in self.links.values()), default=0.0)

    @property
    def size(self) -> int:
        """Bytes of its top-level manifests (an index counts its children; they are not added twice)."""
        children = {d for m in self.links.values() for d in m.manifests}
        return sum(m.total_size for d, m in self.links.items() if d not in children)


class RepoIndex:
    """Repository name -> summary, from watches on the repositories and manifests buckets."""

    def __init__(self) -> None:
        self.repos: dict[str, RepoSummary] = {}
        self._known: set[str] = set()  # names with a repository record
        self._tasks: list[asyncio.Task] = []
        self._dec = codec.decoder(ManifestLink)

    async def start(self, meta: RegistryMeta) -> None:
        """Watch both buckets; returns once each has delivered its current entries."""
        watchers = await meta.watch()
        ready = [asyncio.Event() for _ in watchers]
        self._tasks = [asyncio.create_task(self._follow(w, ev, handle))
                       for w, ev, handle in zip(watchers, ready, (self._on_repo, self._on_link))]
        await asyncio.gather(*(ev.wait() for ev in ready))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _follow(self, watcher, ready: asyncio.Event, handle) -> None:
        try:
            async for entry in watcher:
                if entry is None:
                    ready.set()
                    continue
                try:
                    handle(entry.key, None if entry.operation in ("DEL", "PURGE") else entry.value)
                except Exception:  # one undecodable record must not stop the view
                    log.exception("ui index: cannot apply %s", entry.key)
                if entry.delta == 0:
                    ready.set()
        finally:
            ready.set()
            with contextlib.suppress(Exception):
                await watcher.stop()

    def _on_repo(self, key: str, value: bytes | None) -> None:
        name = kv_key_parts(key)[0]
        if value is None:
            self._known.discard(name)
            if name in self.repos and not self.repos[name].links:
                del self.repos[name]
        else:
            self._known.add(name)
            self.repos.setdefault(name, RepoSummary(name))

    def _on_link(self, key: str, value: bytes | None) -> None:
        repo, digest = kv_key_parts(key)[:2]
        if value is None:
            summary = self.repos.get(repo)
            if summary is not None:
                summary.links.pop(digest, None)
                if not summary.links and repo not in self._known:
                    del self.repos[repo]
            return
        self.repos.setdefault(repo, RepoSummary(repo)).links[digest] = self._dec.decode(value)

    def names(self) -> list[str]:
        return sorted(self.repos)
