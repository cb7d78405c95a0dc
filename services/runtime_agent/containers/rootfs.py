"""A container's root filesystem: its image's snapshots under a writable overlay."""

from __future__ import annotations

from pathlib import Path

from shared.errors import NotFound
from shared.layers import SnapshotStore
from shared.layers import overlay
from shared.oci.digest import Digest


def mount(snapshots: SnapshotStore, cid: str, diff_ids: list[str]) -> Path:
    """Mount (once) the container's rootfs; its path. The upper survives unmounts."""
    try:
        dirs = snapshots.active(cid)
    except NotFound:
        dirs = snapshots.new_active(cid)
    if overlay.is_mounted(dirs.merged):
        return dirs.merged
    missing = [d for d in diff_ids if not snapshots.exists(Digest(d))]
    if missing:
        raise NotFound(f"layers of the container's image are gone: {', '.join(m[:19] for m in missing)}")
    # overlay wants the topmost layer first; a config lists the base first.
    lowers = [snapshots.path(Digest(d)) for d in reversed(diff_ids)]
    if not lowers:
        lowers = [_empty_lower(snapshots)]
    overlay.mount_overlay(lowers, dirs.upper, dirs.work, dirs.merged)
    return dirs.merged


def unmount(snapshots: SnapshotStore, cid: str) -> None:
    try:
        dirs = snapshots.active(cid)
    except NotFound:
        return
    if overlay.is_mounted(dirs.merged):
        overlay.unmount(dirs.merged, detach=True)


def _empty_lower(snapshots: SnapshotStore) -> Path:
    """A FROM-scratch image with no layer still needs one lower directory."""
    p = snapshots.root / "empty"
    p.mkdir(mode=0o755, exist_ok=True)
    return p
