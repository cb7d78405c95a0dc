"""The GC's prune verb on one host: old exited containers, then images nothing uses.

An image is never removed while a container (of any state) refers to it or a run
is about to use it; a layer snapshot goes only when no remaining image lists it and
no pull is under way (a pull unpacks snapshots before its image record exists).
"""

from __future__ import annotations

import fnmatch
import os
import time

from services.runtime_agent.containers.manager import Containers
from services.runtime_agent.images import ImageStore, Puller
from shared.errors import NotFound
from shared.messages.agent import unix_time
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
    if req.exited_before_seconds is not None:
        cutoff = time.time() - req.exited_before_seconds
        for c in containers.list(all=True):
            if c.state.status == "running":
                continue
            examined += 1
            finished = unix_time(c.state.finished_at) or unix_time(c.created) or 0.0
            if finished <= cutoff:
                items.append(f"container {c.name} {c.id[:12]}")
                doomed_containers.add(c.id)
                if not req.dry_run:
                    try:
                        await containers.remove(c.id)
                    except NotFound:
                        continue
                removed += 1
    in_use = {c.config.image_digest for c in containers.list(all=True)
              if c.id not in doomed_containers} | containers.pinned_images()
    doomed_images = [img for img in images.list()
                     if not (img.digest in in_use or _excluded(img.references, req.exclude, puller.stack_registry))]
    examined += len(images.list())
    if not req.dry_run:
        # a run may have begun using one of them since the plan was made: it stays
        busy = containers.images_in_use()
        doomed_images = [img for img in doomed_images if img.digest not in busy]
        for img in doomed_images:
            images.remove(img.digest)
    for img in doomed_images:
        items.append(f"image {(img.references or [img.digest])[0]} {Digest(img.digest).short}")
        removed += 1
        freed += img.size
    # Snapshots no remaining image uses go with them; a dry run counts exactly those bytes too.
    if not puller.busy:
        gone = {img.digest for img in doomed_images}
        keep = {d for img in images.list() if img.digest not in gone for d in img.diff_ids}
        for d in puller.snapshots.list():
            if str(d) in keep:
                continue
            freed += _du(puller.snapshots.path(d))
            if not req.dry_run:
                try:
                    await puller.snapshots.remove(d)
                except NotFound:
                    pass
    return PruneReply(examined=examined, removed=removed, freed=freed, items=items)


def _du(path) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            try:
                total += os.lstat(os.path.join(root, n)).st_blocks * 512
            except OSError:
                pass
    return total
