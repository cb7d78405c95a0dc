"""The GC's prune verb on one host: old exited containers, then images nothing uses.

An image is never removed while a container (of any state) refers to it or a run
is about to use it; a layer snapshot goes only when no remaining image lists it and
no pull is under way (a pull unpacks snapshots before its image record exists).
"""

from __future__ import annotations

import fnmatch
import time

from services.runtime_agent.containers.manager import Containers
from services.runtime_agent.images import ImageStore, Puller
from services.runtime_agent.volumes.store import disk_usage
from shared.errors import NotFound
from shared.messages.agent import unix_time
from shared.messages.volumes import label_matches
from shared.messages.gc import PruneReply, PruneRequest
from shared.oci.digest import Digest
from shared.oci.reference import Reference


def _excluded(refs: list[str], patterns: list[str], stack_registry: str) -> bool:
    """Does any pattern match a name of the image, in full or as users write it?"""
    names = set(refs)
    for r in refs:
        try:
            ref = Reference.parse(r)
        except Exception:  # noqa: BLE001 - a stored reference we cannot parse still matches literally
            continue
        if ref.domain == stack_registry:  # the stack's own images go by their short names
            ref = ref.with_domain(None)
        names.add(f"{ref.path}:{ref.tag}" if ref.tag else ref.path)
        names.add(ref.familiar())
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


async def prune(req: PruneRequest, containers: Containers, images: ImageStore, puller: Puller) -> PruneReply:
    items: list[str] = []
    examined = removed = freed = 0
    doomed_containers: set[str] = set()
    now = time.time()
    created_cutoff = now - req.created_before_seconds if req.created_before_seconds is not None else None
    if req.exited_before_seconds is not None:
        cutoff = now - req.exited_before_seconds
        for c in containers.list(all=True):
            if c.state.status == "running":
                continue
            examined += 1
            finished = unix_time(c.state.finished_at) or unix_time(c.created) or 0.0
            if (finished <= cutoff and label_matches(c.config.labels, req.labels)
                    and (created_cutoff is None or (unix_time(c.created) or 0.0) <= created_cutoff)):
                items.append(f"container {c.name} {c.id[:12]}")
                doomed_containers.add(c.id)
                size = _writable(puller.snapshots, c.id)
                if not req.dry_run:
                    try:
                        await containers.remove(c.id)
                    except NotFound:
                        continue
                removed += 1
                freed += size
    if not req.images:
        return PruneReply(examined=examined, removed=removed, freed=freed, items=items)
    in_use = {c.config.image_digest for c in containers.list(all=True)
              if c.id not in doomed_containers} | containers.pinned_images()
    doomed_images = [img for img in images.list()
                     if not (img.digest in in_use or _excluded(img.references, req.exclude, puller.stack_registry))
                     and _chosen(img, req, images, created_cutoff)]
    examined += len(images.list())
    if not req.dry_run:
        # a run may have begun using one of them since the plan was made: it stays
        busy = containers.images_in_use()
        doomed_images = [img for img in doomed_images if img.digest not in busy]
        for img in doomed_images:
            images.remove(img.digest)
    for img in doomed_images:
        items.append(f"image {(img.references or [img.digest])[0]} {Digest(img.digest).short}")
        removed += 1  # its bytes on disk are its snapshots, counted below (the download is long gone)
    # Snapshots no remaining image uses go with them; a dry run counts exactly those bytes too.
    if not puller.busy:
        gone = {img.digest for img in doomed_images}
        keep = {d for img in images.list() if img.digest not in gone for d in img.diff_ids}
        for d in puller.snapshots.list():
            if str(d) in keep:
                continue
            freed += disk_usage(puller.snapshots.path(d))  # as `system df` counts it
            if not req.dry_run:
                try:
                    await puller.snapshots.remove(d)
                except NotFound:
                    pass
    return PruneReply(examined=examined, removed=removed, freed=freed, items=items)


def _chosen(img, req: PruneRequest, images: ImageStore, created_cutoff: float | None) -> bool:
    """The `image prune` filters: dangling only (no name), labels of its config, pulled before a time."""
    if req.dangling_only and img.references:
        return False
    if created_cutoff is not None and img.pulled_at > created_cutoff:
        return False
    if req.labels:
        try:
            labels = images.config(img.digest).config.labels or {}
        except Exception:  # noqa: BLE001 - an unreadable config matches no label
            labels = {}
        if not label_matches(labels, req.labels):
            return False
    return True


def _writable(snapshots, cid: str) -> int:
    """What `system df` shows for the container (du's count), so that prune frees what df said."""
    try:
        return disk_usage(snapshots.active(cid).upper)
    except NotFound:
        return 0

