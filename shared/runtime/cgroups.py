"""Where a container's cgroup lives on this host, and removing what a runtime leaves."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CgroupMount:
    path: Path
    version: int                  # 1 or 2
    controllers: frozenset[str]   # v1: the mount's options that name controllers


def cgroup_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[CgroupMount]:
    """The cgroup hierarchies mounted in this process's mount namespace."""
    out = []
    with open(mountinfo) as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, post_fields = pre.split(), post.split()
            if len(post_fields) < 3:
                continue
            fstype, super_opts = post_fields[0], post_fields[2]
            mountpoint = Path(fields[4].replace("\\040", " "))
            if fstype == "cgroup2":
                out.append(CgroupMount(mountpoint, 2, frozenset()))
            elif fstype == "cgroup":
                opts = {o for o in super_opts.split(",") if o not in ("rw", "ro")}
                out.append(CgroupMount(mountpoint, 1, frozenset(opts)))
    return out


def is_hybrid(mounts: list[CgroupMount] | None = None) -> bool:
    """v1 controllers plus a cgroup2 mount: the layout crun refuses to work with."""
    mounts = cgroup_mounts() if mounts is None else mounts
    return any(m.version == 1 for m in mounts) and any(m.version == 2 for m in mounts)


def controller_dir(controller: str, cgroups_path: str, mounts: list[CgroupMount] | None = None) -> Path | None:
    """The directory of `cgroups_path` in the v1 hierarchy that holds `controller`."""
    for m in cgroup_mounts() if mounts is None else mounts:
        if m.version == 1 and controller in m.controllers:
            return m.path / cgroups_path.lstrip("/")
    return None


def remove_cgroup(cgroups_path: str, *, remove_empty_parents_up_to: int = 0) -> list[Path]:
    """rmdir `cgroups_path` in every hierarchy; returns directories that would not go.

    A cgroup directory can only be removed once it holds no process; its
    control files vanish with it, so rmdir (not rmtree) is the whole job.
    `remove_empty_parents_up_to` also removes that many now-empty ancestors.
    """
    rel = cgroups_path.strip("/")
    if not rel:
        return []
    stuck = []
    for m in cgroup_mounts():
        d = m.path / rel
        try:
            _rmdir_tree(d)
        except FileNotFoundError:
            pass
        except OSError:
            stuck.append(d)
            continue
        for _ in range(remove_empty_parents_up_to):
            d = d.parent
            if d == m.path:
                break
            try:
                os.rmdir(d)
            except OSError:  # siblings still live there, or it is gone already
                break
    return stuck


def _rmdir_tree(d: Path) -> None:
    """rmdir a cgroup and any child cgroups below it, deepest first."""
    for root, dirs, _files in os.walk(d, topdown=False):
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(d)
