"""Unpacked layers shared by every container and build on a host (containerd's snapshotter idea).

Layout under `root`:
    snapshots/<alg>/<hex>/   one directory per layer diff_id, read-only once committed
    staging/<...>/           unpacks in progress; whatever is here at start is a crash's leftover
    active/<key>/{upper,work,merged}   scratch of one container or build step

A snapshot appears by one rename of a fully unpacked, synced staging directory, so a
crash leaves either nothing or a whole snapshot. One store per root and process: the
per-key locks are asyncio locks, and a second process racing on the same key only
wastes an unpack (the losing rename is discarded).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import AsyncIterator, Awaitable, BinaryIO, Callable, NamedTuple

from shared.fsutil import fsync_dir
from shared.errors import AlreadyExists, InvalidArgument, NotFound
from shared.layers import overlay
from shared.layers.unpack import DEFAULT_MAX_SIZE, UnpackResult, unpack_layer
from shared.oci.digest import Digest

LayerOpener = Callable[[], Awaitable["BinaryIO | Path"]]

_ACTIVE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class ActiveDirs(NamedTuple):
    upper: Path
    work: Path
    merged: Path


class StoreUsage(NamedTuple):
    snapshots: int
    bytes: int  # allocated on disk, hardlinks counted once


class SnapshotStore:
    def __init__(self, root: Path, *, max_layer_size: int = DEFAULT_MAX_SIZE):
        self.root = Path(root)
        self.max_layer_size = max_layer_size
        self._snapshots = self.root / "snapshots"
        self._staging = self.root / "staging"
        self._active = self.root / "active"
        for d in (self._snapshots, self._staging, self._active):
            d.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._clean_staging()

    # -- snapshots ---------------------------------------------------------------

    def path(self, diff_id: Digest) -> Path:
        d = Digest(diff_id)
        return self._snapshots / d.algorithm / d.hex

    def exists(self, diff_id: Digest) -> bool:
        return self.path(diff_id).is_dir()

    async def ensure(self, diff_id: Digest, open_layer: LayerOpener) -> Path:
        """The snapshot of `diff_id`, unpacked from `open_layer()` unless it exists.

        Concurrent calls for one diff_id unpack once. `open_layer` returns a binary file
        (closed here) or a path; the unpacked tar must hash to `diff_id`.
        """
        diff_id = Digest(diff_id)
        final = self.path(diff_id)
        if final.is_dir():
            return final
        async with self._locked(diff_id):
            if final.is_dir():
                return final
            src = await open_layer()
            await asyncio.to_thread(self._unpack_commit, src, diff_id, final)
            return final

    def _unpack_commit(self, src: BinaryIO | Path, diff_id: Digest, final: Path) -> UnpackResult:
        staging = self._staging / f"{diff_id.hex[:16]}-{secrets.token_hex(6)}"
        try:
            f = open(src, "rb") if isinstance(src, (str, Path)) else src
            try:
                result = unpack_layer(f, staging, expected_diff_id=diff_id, max_size=self.max_layer_size)
            finally:
                f.close()
            _syncfs(staging)  # the rename below must never publish files still in the page cache
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(staging)  # another process committed it first
            fsync_dir(final.parent)
            return result
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    async def remove(self, diff_id: Digest) -> None:
        """Delete a snapshot. Callers make sure no mount uses it (GC holds the references)."""
        diff_id = Digest(diff_id)
        async with self._locked(diff_id):
            final = self.path(diff_id)
            trash = self._staging / f"rm-{diff_id.hex[:16]}-{secrets.token_hex(6)}"
            try:
                # Out of sight in one step, deleted at leisure (a crash leaves it in staging/).
                os.rename(final, trash)
            except FileNotFoundError:
                raise NotFound(f"no snapshot of layer {diff_id}") from None
            await asyncio.to_thread(shutil.rmtree, trash, True)

    def list(self) -> list[Digest]:
        out: list[Digest] = []
        for alg_dir in sorted(self._snapshots.iterdir()):
            for entry in sorted(alg_dir.iterdir()):
                try:
                    out.append(Digest(f"{alg_dir.name}:{entry.name}"))
                except InvalidArgument:
                    continue  # not ours
        return out

    async def usage(self) -> StoreUsage:
        return await asyncio.to_thread(self._usage)

    def _usage(self) -> StoreUsage:
        seen: set[tuple[int, int]] = set()
        total = 0
        snapshots = self.list()
        for d in snapshots:
            for dirpath, dirnames, filenames in os.walk(self.path(d)):
                for name in dirnames + filenames:
                    st = os.lstat(os.path.join(dirpath, name))
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                    total += st.st_blocks * 512
        return StoreUsage(snapshots=len(snapshots), bytes=total)

    # -- active (container / build scratch) --------------------------------------

    def new_active(self, key: str) -> ActiveDirs:
        """Fresh upper/work/merged directories for one container or build step."""
        base = self._active_dir(key)
        try:
            base.mkdir()
        except FileExistsError:
            raise AlreadyExists(f"active snapshot {key!r} already exists") from None
        dirs = ActiveDirs(base / "upper", base / "work", base / "merged")
        for d in dirs:
            d.mkdir()
            # The upper's root is the container's "/": its mode shows through.
            os.chmod(d, 0o755)
        return dirs

    def active(self, key: str) -> ActiveDirs:
        base = self._active_dir(key)
        if not base.is_dir():
            raise NotFound(f"no active snapshot {key!r}")
        return ActiveDirs(base / "upper", base / "work", base / "merged")

    def list_active(self) -> list[str]:
        return sorted(p.name for p in self._active.iterdir() if _ACTIVE_KEY.match(p.name))

    async def remove_active(self, key: str) -> bool:
        """Unmount (if mounted) and delete an active snapshot; False if there was none."""
        base = self._active_dir(key)
        if not base.is_dir():
            return False
        merged = base / "merged"
        if overlay.is_mounted(merged):
            overlay.unmount(merged)
        trash = self._staging / f"rm-{key}-{secrets.token_hex(6)}"
        os.rename(base, trash)
        await asyncio.to_thread(shutil.rmtree, trash, True)
        return True

    def _active_dir(self, key: str) -> Path:
        if not _ACTIVE_KEY.match(key):
            raise InvalidArgument(f"invalid active snapshot key {key!r}")
        return self._active / key

    # -- internals ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]

    def _clean_staging(self) -> None:
        for entry in self._staging.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


