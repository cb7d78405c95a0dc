"""RUN mounts that are not secrets: cache dirs that outlive builds, tmpfs, and what they need.

A cache mount is a directory under the builder's store, named by its id (and,
with `from=`, by what seeds it), bind-mounted into the step: its contents are
never in the step's upper dir, so never in a layer, and never in the step's
cache key (as with BuildKit). `sharing` says what concurrent steps get:
`shared` the same dir, `locked` the same dir one step at a time, `private` a
dir of their own when the first is busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator, Protocol

from shared.errors import InvalidArgument
from shared.runtime.spec import BindMount
from services.builder.executor import rootfs
from services.builder.executor.copy import inside
from services.builder.frontend.steps import Mount, RunStep

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_MNT_DETACH = 2
DEFAULT_CACHE_MODE = 0o755


@contextlib.contextmanager
def tmpfs(target: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted on `target` (made here) for the duration; removed after."""
    target.mkdir(mode=0o700)
    try:
        rc = _libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", 0, options.encode())
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount tmpfs on {target}: {os.strerror(err)}")
        try:
            yield target
        finally:
            _libc.umount2(os.fsencode(target), _MNT_DETACH)
    finally:
        os.rmdir(target)


@dataclass(frozen=True)
class CacheDir:
    name: str
    path: Path
    size: int
    last_used: float


class CacheDirs:
    """The cache mounts of one builder: `<root>/<name>/data`, last use in `<name>`'s mtime."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.purge((".rm-", ".new-"))  # what a crash left behind: no step runs yet
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @staticmethod
    def name(m: Mount, seed: str) -> str:
        """A cache's dir name: its id, and what seeds it (another `from` is another cache)."""
        return hashlib.sha256(f"{m.id}\0{seed}\0{m.source if seed else ''}".encode()).hexdigest()[:32]

    @contextlib.asynccontextmanager
    async def use(self, m: Mount, seed: str, seed_dir: Callable[[], Path | None]) -> AsyncIterator[Path]:
        """The host dir to bind on `m.target`, created (from `seed_dir()`) on first use."""
        name = self.name(m, seed)
        if m.sharing == "private":
            n = 0
            while self._users.get(f"{name}-{n}" if n else name):
                n += 1
            name = f"{name}-{n}" if n else name
        lock = self._locks.setdefault(name, asyncio.Lock()) if m.sharing == "locked" else None
        async with lock if lock is not None else contextlib.nullcontext():
            self._users[name] = self._users.get(name, 0) + 1
            try:
                data = self.root / name / "data"
                if not data.is_dir():
                    await asyncio.to_thread(self._create, name, m, seed_dir)
                os.utime(self.root / name)
                yield data
            finally:
                self._users[name] -= 1
                if not self._users[name]:
                    del self._users[name]

    def _create(self, name: str, m: Mount, seed_dir: Callable[[], Path | None]) -> None:
        tmp = self.root / f".new-{name}-{uuid.uuid4().hex[:8]}"
        try:
            src = seed_dir()
            seeded = src is not None and src.is_dir()
            data = tmp / "data"
            if seeded:
                shutil.copytree(src, data, symlinks=True)  # keeps the seed's owner and mode
            else:
                data.mkdir(parents=True)
            if m.mode is not None or not seeded:
                os.chmod(data, m.mode if m.mode is not None else DEFAULT_CACHE_MODE)
            if m.uid is not None or m.gid is not None or not seeded:
                os.chown(data, m.uid or 0, m.gid or 0)
            try:
                os.rename(tmp, self.root / name)
            except OSError:
                if not (self.root / name / "data").is_dir():
                    raise  # not a concurrent creator that won
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def in_use(self) -> set[str]:
        return set(self._users)

    def list(self) -> list[CacheDir]:
        out = []
        for d in self.root.iterdir():
            if d.name.startswith("."):
                continue
            try:
                last = d.stat().st_mtime
            except FileNotFoundError:
                continue
            out.append(CacheDir(d.name, d, _du(d), last))
        return out

    def plan(self, *, now: float, max_age: float | None, max_bytes: int | None) -> list[CacheDir]:
        """The unused caches to drop: older than `max_age`, then least recently used over `max_bytes`."""
        busy = self.in_use()
        dirs = sorted(self.list(), key=lambda c: (c.last_used, c.name))
        doomed = [c for c in dirs if max_age is not None and now - c.last_used > max_age and c.name not in busy]
        if max_bytes is not None:
            total = sum(c.size for c in dirs if c not in doomed)
            for c in dirs:
                if total <= max_bytes:
                    break
                if c in doomed or c.name in busy:
                    continue
                doomed.append(c)
                total -= c.size
        return doomed

    def remove(self, caches: list[CacheDir]) -> list[CacheDir]:
        """Move `caches` that are still unused out of sight (on the loop: no step can start using
        one meanwhile); `purge` deletes them. Those moved."""
        busy = self.in_use()
        gone = []
        for c in caches:
            if c.name in busy:
                continue
            try:
                os.rename(c.path, self.root / f".rm-{c.name}-{uuid.uuid4().hex[:8]}")
            except FileNotFoundError:
                continue
            gone.append(c)
        return gone

    def purge(self, prefixes: tuple[str, ...] = (".rm-",)) -> None:
        """Delete what `remove` moved aside."""
        for d in self.root.iterdir():
            if d.name.startswith(prefixes):
                shutil.rmtree(d, ignore_errors=True)


def _du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


class MountSources(Protocol):
    """What the mounts of a step read from: the context, other stages, images."""

    context_root: Path

    async def lowers_of(self, stage: int | None, image: str | None) -> list[Path]: ...

    def identity_of(self, stage: int | None, image: str | None) -> str: ...


async def step_mounts(step: RunStep, src: MountSources, caches: CacheDirs, stack: contextlib.AsyncExitStack,
                      scratch: Path) -> tuple[BindMount, ...]:
    """Host dirs for a RUN's bind, cache and tmpfs mounts, held open by `stack`."""
    where = step.src.where("RUN")
    out: list[BindMount] = []
    for i, m in enumerate(step.mounts):
        if m.type == "ssh":
            if m.required:
                raise InvalidArgument(f"{where}: RUN --mount=type=ssh,id={m.id},required: this builder forwards no "
                                      "SSH agent (dockyard build has no --ssh); fetch what needs SSH into the context")
            continue  # BuildKit skips an optional ssh mount it was given no agent for
        if m.type == "tmpfs":
            size = f",size={m.size}" if m.size else ""
            out.append(BindMount(str(stack.enter_context(tmpfs(scratch / f"tmpfs{i}", "mode=1777" + size))),
                                 m.target))
            continue
        if m.type == "cache":
            seed = src.identity_of(m.from_stage, m.from_image) if (m.from_stage is not None or m.from_image) else ""
            lowers = await src.lowers_of(m.from_stage, m.from_image) if seed else []

            def seed_dir(lowers=lowers, i=i, m=m) -> Path | None:
                if not lowers:
                    return None
                view = stack.enter_context(rootfs.readonly(lowers, _mkdir(scratch / f"seed{i}")))
                return inside(view, m.source)

            out.append(BindMount(str(await stack.enter_async_context(caches.use(m, seed, seed_dir))), m.target))
            continue
        # bind: from the context (read-only, never changed: layers hard-link its files), a stage or an image
        if m.from_stage is None and not m.from_image:
            root = src.context_root
        else:
            lowers = await src.lowers_of(m.from_stage, m.from_image)
            root = stack.enter_context(rootfs.readonly(lowers, _mkdir(scratch / f"from{i}")))
        path = inside(root, m.source)
        if not os.path.lexists(path):
            raise InvalidArgument(f"{where}: failed to compute cache key: \"{m.source}\": not found")
        if m.readonly:
            out.append(BindMount(str(path), m.target, readonly=True))
        elif path.is_dir():
            # rw: the step may write, but its writes go to a throwaway upper.
            merged, _ = stack.enter_context(rootfs.writable([path], _mkdir(scratch / f"rw{i}")))
            out.append(BindMount(str(merged), m.target))
        else:
            copy = _mkdir(scratch / f"rw{i}") / path.name
            shutil.copy2(path, copy)
            out.append(BindMount(str(copy), m.target))
    return tuple(out)


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p
