"""Paths inside an image's root: symlinks followed as if the root were "/", never above it."""

from __future__ import annotations

from typing import Callable

from shared.errors import InvalidArgument

MAX_HOPS = 40  # like Linux's MAXSYMLINKS


def follow_in_root(path: str, readlink: Callable[[str], str | None]) -> str:
    """`path` (relative to the root) with every symlink followed inside the root (BuildKit's fs.RootPath).

    `readlink(p)` is the target of the link at `p` (relative, no leading `/`), or
    None if `p` is no link. An absolute target starts again at the root and `..`
    stops there, so a link can never name a path outside it.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        target = readlink("/".join(done + [name]))
        if target is None:
            done.append(name)
            continue
        hops += 1
        if hops > MAX_HOPS:
            raise InvalidArgument(f"{path}: too many levels of symbolic links")
        if target.startswith("/"):
            done = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return "/".join(done)
