"""Read the registry metadata (manifest links and tags) into a mark graph.

The buckets and records are RegistryMeta's (shared/registry_meta); they are read here in
one complete pass each (`kvscan`), with the KV revision of every link, rather than key by
key, so that a snapshot is never partial and a large registry reads fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from shared import subjects
from shared.bus import kv_key_parts
from shared.oci import mediatypes as mt
from shared.registry_meta import ManifestLink, TagRecord
from services.garbage_collector import kvscan
from services.garbage_collector.mark import Graph, ManifestNode


@dataclass(slots=True)
class Snapshot:
    graph: Graph
    sizes: dict[tuple[str, str], int] = field(default_factory=dict)  # manifest bytes
    # KV revision of each link as read: deletes are refused if the link changed since
    revisions: dict[tuple[str, str], int] = field(default_factory=dict)


def node_of(link: ManifestLink) -> ManifestNode:
    is_index = link.media_type in mt.INDEXES or bool(link.manifests)
    return ManifestNode(repo=link.repository, digest=str(link.digest), pushed_at=link.pushed_at,
                        children=tuple(str(c) for c in link.children),
                        subject=str(link.subject) if link.subject else None, is_index=is_index)


async def load(nc: NATS, suffix: str = "") -> Snapshot:
    """Every manifest link and tag (read after the caller recorded its fence time)."""
    snap = Snapshot(Graph())
    for _, link, rev in await kvscan.scan(nc, subjects.KV_MANIFESTS + suffix, ManifestLink):
        key = (link.repository, str(link.digest))
        snap.graph.add(node_of(link))
        snap.sizes[key] = link.size
        snap.revisions[key] = rev
    for key, tag, _ in await kvscan.scan(nc, subjects.KV_TAGS + suffix, TagRecord):
        repo, name = kv_key_parts(key)[:2]
        snap.graph.tag(repo, name, str(tag.digest))
    return snap
