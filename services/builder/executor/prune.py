"""Pruning the build cache: records by age and size budget (LRU first), and their local layers.

The budget counts each layer once (records of different steps may share a
layer) at its compressed size, the bytes the cache holds in the registry.
Records that a running build has leased are never removed, but they count
toward the budget. A dry run computes the very plan a real run carries out.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from services.builder.executor.cache import Entry
from services.builder.executor.store import LocalStore


@dataclass
class Plan:
    remove: list[Entry] = field(default_factory=list)  # in the order they go (oldest first)
    keep: list[Entry] = field(default_factory=list)
    leased: int = 0  # candidates kept because a running build holds them

    def freed_layers(self) -> dict[str, tuple[str, int]]:
        """Layers (digest -> (diff_id, size)) that no kept record references."""
        kept = {e.rec.digest for e in self.keep if e.rec.digest}
        out: dict[str, tuple[str, int]] = {}
        for e in self.remove:
            if e.rec.digest and e.rec.digest not in kept:
                out[e.rec.digest] = (str(e.rec.diff_id or ""), e.rec.size)
        return out

    @property
    def freed(self) -> int:
        return sum(size for _, size in self.freed_layers().values())


def plan(entries: list[Entry], *, now: float, max_age: float | None, max_bytes: int | None,
         leased: set[str]) -> Plan:
    """What to remove: records unused for longer than `max_age`, then LRU until under `max_bytes`."""
    # Least recently used first; ties by key, so a dry run and a real run agree.
    order = sorted(entries, key=lambda e: (e.rec.last_used, e.key))
    out = Plan()
    doomed: set[str] = set()
    if max_age is not None:
        for e in order:
            if now - e.rec.last_used > max_age:
                if e.key in leased:
                    out.leased += 1
                else:
                    doomed.add(e.key)
    if max_bytes is not None:
        refs: dict[str, int] = {}  # layer digest -> records still holding it
        sizes: dict[str, int] = {}
        for e in order:
            if e.key not in doomed and e.rec.digest:
                refs[e.rec.digest] = refs.get(e.rec.digest, 0) + 1
                sizes[e.rec.digest] = e.rec.size
        total = sum(sizes.values())
        for e in order:
            if total <= max_bytes:
                break
            if e.key in doomed:
                continue
            if e.key in leased:
                out.leased += 1
                continue
            doomed.add(e.key)
            if e.rec.digest:
                refs[e.rec.digest] -= 1
                if refs[e.rec.digest] == 0:
                    total -= e.rec.size
    for e in order:
        (out.remove if e.key in doomed else out.keep).append(e)
    return out


def trash_local(store: LocalStore, layers: dict[str, str], in_use: set[str]) -> Path:
    """Move local blobs and snapshots of `layers` (digest -> diff_id) to a trash dir.

    Layers a running build of this process uses stay. Renames only, and no
    await in between: a build cannot start using a layer halfway through.
    Empty the returned dir with `empty_trash` (slow, in a thread).
    """
    trash = store.work / f"trash-{uuid.uuid4().hex[:8]}"
    trash.mkdir()
    moved = 0
    for digest, diff_id in layers.items():
        if digest in in_use or (diff_id and diff_id in in_use):
            continue
        paths = [store.blob_path(digest)]
        if diff_id:
            paths.append(store.snapshot_path(diff_id))
        for p in paths:
            try:
                os.rename(p, trash / str(moved))
                moved += 1
            except FileNotFoundError:
                pass
    return trash


def empty_trash(trash: Path) -> int:
    """Delete a trash dir; the bytes of disk it held."""
    freed = _disk_usage(trash)
    shutil.rmtree(trash, ignore_errors=True)
    return freed


def _disk_usage(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total
