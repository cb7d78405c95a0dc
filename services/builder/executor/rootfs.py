"""A stage's filesystem: its layer snapshots stacked with overlayfs.

`lowers` are bottom-first everywhere in the builder (the order of the
manifest); overlay wants them top-first, which is done here only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path
from typing import Iterator

from shared.layers.paths import follow_in_root
from shared.layers.overlay import mount_overlay, mount_readonly, unmount


@contextlib.contextmanager
def writable(lowers: list[Path], scratch: Path) -> Iterator[tuple[Path, Path]]:
    """Mount (merged, upper): changes made under `merged` land in `upper`."""
    upper, work, merged, empty = (scratch / n for n in ("upper", "work", "merged", "empty"))
    for d in (upper, work, merged, empty):
        d.mkdir(exist_ok=True)
    os.chmod(upper, 0o755)
    # overlay needs a lower even for FROM scratch: an empty one then.
    stack = list(reversed(lowers)) or [empty]
    mount_overlay(stack, upper, work, merged)
    try:
        yield merged, upper
    finally:
        unmount(merged, detach=True)
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def readonly(lowers: list[Path], scratch: Path) -> Iterator[Path]:
    """A read-only view of a stack of snapshots (an empty dir for none)."""
    view = scratch / "view"
    view.mkdir(exist_ok=True)
    if not lowers:
        yield view
        return
    mount_readonly(list(reversed(lowers)), view)
    try:
        yield view
    finally:
        unmount(view, detach=True)


def locate(lowers: list[Path], path: str) -> Path | None:
    """Where `path` of the merged view of `lowers` lives on disk, without mounting it.

    Walks the layers top-down: the first layer that has the path wins, a
    whiteout of it (or an opaque parent) hides everything below.
    """
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        return lowers[-1] if lowers else None
    for layer in reversed(lowers):
        cur = layer
        hidden = False
        for i, name in enumerate(parts):
            p = cur / name
            try:
                st = os.lstat(p)
            except (FileNotFoundError, NotADirectoryError):
                st = None
            if st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                hidden = True  # a whiteout
                break
            if st is None:
                break
            if i == len(parts) - 1:
                return p
            if not stat.S_ISDIR(st.st_mode):
                hidden = True  # a file shadows whatever lower layers have below it
                break
            try:
                if os.getxattr(p, "trusted.overlay.opaque") == b"y" and i < len(parts) - 1:
                    # An opaque dir: lower layers cannot add anything beneath it.
                    nxt = p / parts[i + 1]
                    if not os.path.lexists(nxt):
                        hidden = True
                        break
            except OSError:
                pass
            cur = p
        if hidden:
            return None
    return None


def lookup(lowers: list[Path], path: str) -> os.stat_result | None:
    """lstat of `path` in the merged view of `lowers` (see `locate`)."""
    p = locate(lowers, path)
    return None if p is None else os.lstat(p)


def resolve(lowers: list[Path], path: str) -> str:
    """`path` with the image's symlinks followed, never out of the image (see follow_in_root)."""
    def readlink(p: str) -> str | None:
        found = locate(lowers, p) if lowers else None
        return os.readlink(found) if found is not None and found.is_symlink() else None

    return "/" + follow_in_root(path, readlink)


def remove_mount_stubs(upper: Path, created: list[str]) -> None:
    """Drop the empty files and dirs the runtime made as mountpoints (BuildKit does too)."""
    for rel in sorted(created, key=lambda p: p.count("/"), reverse=True):
        p = upper / rel.strip("/")
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir(p)
            except OSError:
                pass  # the step wrote something there: keep it
        elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
            p.unlink()
