"""cp (both ways), diff and export: a container's files, through its root and nothing else.

The root is the container's overlay (mounted again if it is stopped); every path is
resolved inside it by shared.tarcopy, so a symlink in the container (`/etc -> /`,
`../../..`) never takes a read or a write to the host. A path under a volume or tmpfs
is the container's upper, not the volume: those mounts live in the container's own
mount namespace (noted in docs/cli.md).
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import stat
from pathlib import Path

from services.runtime_agent.containers import rootfs
from services.runtime_agent.verbs import streams
from shared import tarcopy
from shared.errors import InvalidArgument, NotFound
from shared.messages.agent import Container
from shared.messages.verbs import Change, PathStat
from shared.oci.digest import Digest


def root_of(cs, c: Container) -> Path:
    image = cs.images.get(c.config.image_digest)
    return rootfs.mount(cs.snapshots, c.id, image.diff_ids)


def _check(path: str) -> str:
    if not path or "\0" in path or len(path) > 4096:
        raise InvalidArgument(f"invalid path {path!r}")
    return path if path.startswith("/") else "/" + path


async def stat_from(cs, c: Container, path: str, follow: bool) -> tuple[str, str, PathStat]:
    """What `cp CONTAINER:PATH` will copy: (root, path checked, its stat), NotFound if nothing."""
    path = _check(path)
    root = str(await asyncio.to_thread(root_of, cs, c))
    follow_last = follow or path.endswith("/") or path.endswith("/.")
    rel, st, target = await asyncio.to_thread(tarcopy.lstat_in, root, path.rstrip("/") or "/",
                                              follow_last=follow_last)
    info = PathStat(name=posixpath.basename(path.rstrip("/")) or "/", size=st.st_size,
                    mode=st.st_mode, is_dir=stat.S_ISDIR(st.st_mode), link_target=target)
    if path.endswith("/") and not info.is_dir and not path.endswith("/."):
        raise InvalidArgument(f"{path}: not a directory")
    return root, path, info


async def copy_from(cs, nc, c: Container, path: str, follow: bool, inbox: str, *,
                    raw: bool = False) -> tuple[PathStat, int]:
    if not inbox:
        raise InvalidArgument("cp needs a stream_inbox for the bytes")
    root, path, info = await stat_from(cs, c, path, follow)
    sent = await streams.send(nc, inbox, lambda f: tarcopy.write_tar(root, path, f, follow_last=follow), raw=raw)
    return info, sent


async def target_to(cs, c: Container, path: str, src_base: str) -> tuple[str, str, tuple[str, str] | None]:
    """Where `cp SRC CONTAINER:PATH` extracts: (root, directory, rename of the top entry)."""
    path = _check(path)
    if c.config.flags.read_only:
        raise InvalidArgument("container rootfs is marked read-only")
    root = str(await asyncio.to_thread(root_of, cs, c))

    def where() -> tuple[str, tuple[str, str] | None]:
        try:
            _, st, _ = tarcopy.lstat_in(root, path, follow_last=True)
            if stat.S_ISDIR(st.st_mode):
                return path, None
        except NotFound:
            if path.endswith("/"):
                raise NotFound(f"no such directory: {path}") from None
        parent, name = posixpath.split(path.rstrip("/"))
        if not name or not src_base:
            raise InvalidArgument(f"cannot copy to {path}")
        return parent or "/", (src_base, name)

    return (root, *await asyncio.to_thread(where))


async def copy_to(cs, nc, c: Container, path: str, src_base: str, keep_owner: bool, inbox: str) -> int:
    if not inbox:
        raise InvalidArgument("cp needs a stream_inbox for the bytes")
    root, dest, rename = await target_to(cs, c, path, src_base)
    return await streams.receive(nc, inbox, lambda f: tarcopy.extract(f, root, dest, rename=rename,
                                                                       keep_owner=keep_owner))


EVERYTHING = "/."  # export's path: the root's contents, without an entry of its own


async def export(cs, nc, c: Container, inbox: str, *, raw: bool = False) -> int:
    if not inbox:
        raise InvalidArgument("export needs a stream_inbox for the bytes")
    root = str(await asyncio.to_thread(root_of, cs, c))
    return await streams.send(nc, inbox, lambda f: tarcopy.write_tar(root, EVERYTHING, f), raw=raw)


# ---- diff ---------------------------------------------------------------------------------

# Where the runtime mounts over the rootfs: an empty file or directory it had to create there
# is no change of the container's own (docker leaves them out too).
_MOUNT_POINTS = {"/dev", "/proc", "/sys", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/pts",
                 "/dev/shm", "/dev/mqueue", "/sys/fs/cgroup", "/run"}


def changes(cs, c: Container) -> list[Change]:
    """docker diff: A (added), C (changed), D (deleted) against the image, parents included."""
    try:
        upper = cs.snapshots.active(c.id).upper
    except NotFound:
        return []
    lowers = [cs.snapshots.path(Digest(d)) for d in cs.images.get(c.config.image_digest).diff_ids]
    skip = _MOUNT_POINTS | {v.destination for v in c.config.volumes} | {t.path for t in c.config.flags.tmpfs}
    if c.config.flags.init:
        skip.add("/sbin/docker-init")
    out: list[Change] = []
    for dirpath, dirnames, filenames in os.walk(upper):
        rel_dir = "/" + os.path.relpath(dirpath, upper) if dirpath != str(upper) else ""
        for n in sorted(dirnames + filenames):
            rel = f"{rel_dir}/{n}"
            full = os.path.join(dirpath, n)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            in_image = any(os.path.lexists(str(lo) + rel) for lo in lowers)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # an overlay whiteout
                if in_image:
                    out.append(Change(kind="D", path=rel))
                continue
            if rel in skip and (stat.S_ISDIR(st.st_mode) or st.st_size == 0):
                continue
            out.append(Change(kind="C" if in_image else "A", path=rel))
    # a directory copied up only to hold a mount point or a whiteout's parent: keep it when
    # something below it is listed (docker lists the parents of every change as C)
    listed = {ch.path for ch in out}
    kept = [ch for ch in out if not (ch.kind == "C" and _is_dir(upper, ch.path)
                                     and not any(p.startswith(ch.path + "/") for p in listed))]
    return sorted(kept, key=lambda ch: ch.path)


def _is_dir(upper: Path, rel: str) -> bool:
    return stat.S_ISDIR(os.lstat(str(upper) + rel).st_mode)
